"""The gate for taggers: the classification gate's rules on entity-level micro F1.

Same decision, same `Check` rows and Markdown table as tasks/gate.py: each old slice
must be non-inferior (one-sided paired bootstrap, Holm-corrected over slices, small
slices pooled), the old exam as a whole too, and the new batch's held-out sentences
must reach `gate.min_new_slice_score` F1. Only the statistic differs: F1 is not a mean
over sentences, so each bootstrap resample draws sentences (the same ones for candidate
and champion) and recomputes both F1s from their summed tp/fp/fn counts.
"""

from __future__ import annotations

import numpy as np

from tasks.config import GateConfig
from tasks.gate import Check, GateDecision, _groups, _reason


def f1(tp, fp, fn) -> np.ndarray:
    tp, fp, fn = (np.asarray(x, dtype=float) for x in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(denom), where=denom > 0)


def _f1_of(c: np.ndarray) -> float:
    """c: (n, 3) per-sentence tp, fp, fn."""
    return float(f1(*c.sum(0)))


def paired_f1_test(cand: np.ndarray, champ: np.ndarray, *, tolerance: float, alpha: float, n_resamples: int,
                   seed: int) -> tuple[float, float]:
    """Lower (1 - alpha) percentile bound on F1(cand) - F1(champ) and the bootstrap p of
    H0: the difference <= -tolerance, resampling sentences in pairs."""
    rng = np.random.default_rng(seed)
    n = len(cand)
    diffs = []
    for start in range(0, n_resamples, 256):  # chunks keep the index matrix small
        idx = rng.integers(0, n, size=(min(256, n_resamples - start), n))
        a, b = cand[idx].sum(1), champ[idx].sum(1)  # (k, 3)
        diffs.append(f1(*a.T) - f1(*b.T))
    dist = np.concatenate(diffs)
    if np.all(dist == dist[0]):
        return float(dist[0]), 0.0 if dist[0] > -tolerance else 1.0
    p_value = (np.count_nonzero(dist <= -tolerance) + 1) / (dist.size + 1)
    return float(np.quantile(dist, alpha)), float(p_value)


def _check(name: str, kind: str, cand: np.ndarray, champ: np.ndarray, cfg: GateConfig, seed: int):
    lb, p = paired_f1_test(cand, champ, tolerance=cfg.tolerance, alpha=cfg.alpha, n_resamples=cfg.n_resamples,
                           seed=seed)
    return Check(name, kind, len(cand), round(_f1_of(champ), 4), round(_f1_of(cand), 4), round(lb, 4), p,
                 -cfg.tolerance, "pass")


def decide_ner(candidate: dict, champion: dict | None, cfg: GateConfig, seed: int = 0) -> GateDecision:
    """`candidate`/`champion`: `evaluate_tagger` sheets on the same exam (champion None
    before the first promotion: only the new batch is judged)."""
    from statsmodels.stats.multitest import multipletests

    rows = candidate["rows"]
    cand = np.column_stack([rows["tp"], rows["fp"], rows["fn"]]).astype(int)
    new = np.asarray(rows["is_new"], dtype=bool)
    checks: list[Check] = []
    if champion is not None and (~new).any():
        champ = np.column_stack([champion["rows"][k] for k in ("tp", "fp", "fn")]).astype(int)
        groups = _groups(np.asarray(rows["slice"], dtype=object), ~new, cfg.min_slice_size)
        judged = {name: _check(f"slice:{name}", "old_slice", cand[m], champ[m], cfg, seed)
                  for name, m in groups.items() if m.sum() >= cfg.min_slice_size}
        adjusted = multipletests([c.p_value for c in judged.values()], alpha=cfg.alpha, method="holm")[1] \
            if judged else []
        for (name, c), p in zip(list(judged.items()), adjusted):
            judged[name] = Check(c.name, c.kind, c.rows, c.champion, c.candidate, c.lower_bound, round(float(p), 4),
                                 c.threshold, "pass" if p < cfg.alpha else "FAIL")
        for name, m in groups.items():
            if name not in judged:
                judged[name] = Check(f"slice:{name}", "old_slice", int(m.sum()), round(_f1_of(champ[m]), 4),
                                     round(_f1_of(cand[m]), 4), None, None, -cfg.tolerance, "unjudgeable")
            checks.append(judged[name])
        overall = _check("old exam overall", "old_overall", cand[~new], champ[~new], cfg, seed)
        checks.append(Check(**{**overall.__dict__, "p_value": round(overall.p_value, 4),
                               "verdict": "pass" if overall.p_value < cfg.alpha else "FAIL"}))
    score = round(_f1_of(cand[new]), 4) if new.any() else 0.0
    checks.append(Check("new batch held-out (entity F1)", "new_batch", int(new.sum()), None, score, None, None,
                        cfg.min_new_slice_score, "pass" if new.any() and score >= cfg.min_new_slice_score else "FAIL"))
    failed = [c for c in checks if not c.passed]
    notes = [_reason(c, cfg) for c in checks if c.verdict == "unjudgeable"]
    reasons = [_reason(c, cfg) for c in failed] or [f"all {len(checks) - len(notes)} judged checks passed"]
    return GateDecision(promote=not failed, reasons=reasons + notes, checks=checks)
