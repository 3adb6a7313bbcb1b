"""Gate: promote only when nothing the champion knew got worse and the new batch was learned.

A pure function over the per-row exam outcomes of candidate and champion (the output of
`tasks.evaluate.evaluate`). A point comparison on a 450-row slice flips on a handful of
rows, so each old slice is judged statistically:

- candidate and champion answered the *same* held-out rows, so a paired bootstrap
  (scipy) of the accuracy difference gives a one-sided lower confidence bound; the slice
  passes when it is non-inferior, i.e. the test rejects "the candidate is worse by more
  than gate.tolerance";
- the old slices form one family, Holm-corrected (statsmodels), so adding slices does
  not make a lucky pass more likely;
- slices below gate.min_slice_size are pooled; a pool still too small is reported as
  unjudgeable instead of silently passing;
- the old exam as a whole gets the same test; the new batch's held-out rows must reach
  gate.min_new_slice_score.
Every check becomes a row in decision.json and in a Markdown table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from tasks.config import GateConfig

POOLED = "small slices (pooled)"


@dataclass(frozen=True)
class Check:
    name: str
    kind: str                  # old_slice | old_overall | new_batch
    rows: int
    champion: float | None     # accuracy on these rows
    candidate: float
    lower_bound: float | None  # one-sided lower confidence bound on candidate - champion
    p_value: float | None      # p of "worse by more than tolerance" (Holm-adjusted for slices)
    threshold: float           # -tolerance for old rows, min score for the new batch
    verdict: str               # pass | FAIL | unjudgeable

    @property
    def passed(self) -> bool:
        return self.verdict != "FAIL"


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reasons: list[str]
    checks: list[Check] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def markdown(self) -> str:
        fmt = lambda x, spec: "-" if x is None else format(x, spec)  # noqa: E731
        lines = ["| check | rows | champion | candidate | delta | lower bound | p | threshold | verdict |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for c in self.checks:
            delta = None if c.champion is None else c.candidate - c.champion
            lines.append(f"| {c.name} | {c.rows} | {fmt(c.champion, '.4f')} | {c.candidate:.4f} | "
                         f"{fmt(delta, '+.4f')} | {fmt(c.lower_bound, '+.4f')} | {fmt(c.p_value, '.4f')} | "
                         f"{c.threshold:+.4f} | {c.verdict} |")
        return "\n".join(lines)


def paired_test(cand: np.ndarray, champ: np.ndarray, *, tolerance: float, alpha: float,
                n_resamples: int, seed: int) -> tuple[float, float]:
    """Lower (1 - alpha) bound on mean(cand - champ) and the bootstrap p-value of
    H0: mean(cand - champ) <= -tolerance, from a paired bootstrap over rows."""
    from scipy.stats import bootstrap

    diff = cand.astype(float) - champ.astype(float)
    if np.all(diff == diff[0]):  # no spread to resample: the difference is exact
        return float(diff[0]), 0.0 if diff[0] > -tolerance else 1.0
    result = bootstrap((diff,), np.mean, n_resamples=n_resamples, confidence_level=1 - alpha,
                       alternative="greater", method="percentile", rng=np.random.default_rng(seed))
    dist = result.bootstrap_distribution
    p_value = (np.count_nonzero(dist <= -tolerance) + 1) / (dist.size + 1)
    return float(result.confidence_interval.low), float(p_value)


def _groups(slices: np.ndarray, old: np.ndarray, min_size: int) -> dict[str, np.ndarray]:
    """Row masks per old slice; slices smaller than min_size share one pooled group."""
    groups, pooled = {}, np.zeros_like(old)
    for name in sorted(set(slices[old])):
        mask = old & (slices == name)
        if mask.sum() >= min_size:
            groups[name] = mask
        else:
            pooled |= mask
    if pooled.any():
        groups[POOLED] = pooled
    return groups


def _old_checks(cand: np.ndarray, champ: np.ndarray, groups: dict, cfg: GateConfig, seed: int) -> list[Check]:
    from statsmodels.stats.multitest import multipletests

    judged, checks = [], {}
    for name, mask in groups.items():
        rows = int(mask.sum())
        if rows < cfg.min_slice_size:
            checks[name] = Check(f"slice:{name}", "old_slice", rows, float(champ[mask].mean()),
                                 float(cand[mask].mean()), None, None, -cfg.tolerance, "unjudgeable")
            continue
        lb, p = paired_test(cand[mask], champ[mask], tolerance=cfg.tolerance, alpha=cfg.alpha,
                            n_resamples=cfg.n_resamples, seed=seed)
        judged.append((name, rows, lb, p))
    if judged:
        passed, adjusted, _, _ = multipletests([p for *_, p in judged], alpha=cfg.alpha, method="holm")
        for (name, rows, lb, _), ok, p_adj in zip(judged, passed, adjusted):
            mask = groups[name]
            checks[name] = Check(f"slice:{name}", "old_slice", rows, round(float(champ[mask].mean()), 4),
                                 round(float(cand[mask].mean()), 4), round(lb, 4), round(float(p_adj), 4),
                                 -cfg.tolerance, "pass" if ok else "FAIL")
    return [checks[name] for name in groups]


def _overall_check(cand: np.ndarray, champ: np.ndarray, cfg: GateConfig, seed: int) -> Check:
    lb, p = paired_test(cand, champ, tolerance=cfg.tolerance, alpha=cfg.alpha,
                        n_resamples=cfg.n_resamples, seed=seed)
    return Check("old exam overall", "old_overall", int(cand.size), round(float(champ.mean()), 4),
                 round(float(cand.mean()), 4), round(lb, 4), round(p, 4), -cfg.tolerance,
                 "pass" if p < cfg.alpha else "FAIL")


def _new_check(cand: np.ndarray, cfg: GateConfig) -> Check:
    acc = round(float(cand.mean()), 4) if cand.size else 0.0
    verdict = "pass" if cand.size and acc >= cfg.min_new_slice_score else "FAIL"
    return Check("new batch held-out", "new_batch", int(cand.size), None, acc, None, None,
                 cfg.min_new_slice_score, verdict)


def _reason(c: Check, cfg: GateConfig) -> str:
    if c.kind == "new_batch" and c.rows == 0:
        return ("the batch has no held-out rows, so learning it cannot be shown: add a `split` "
                "column with test rows, or more rows (intake.test_share of them are held out)")
    if c.kind == "new_batch":
        return f"{c.name}: candidate {c.candidate:.4f} below {cfg.min_new_slice_score:.4f}"
    if c.verdict == "unjudgeable":
        return f"{c.name}: only {c.rows} held-out rows (< gate.min_slice_size), not judged"
    p_name = "Holm-adjusted p" if c.kind == "old_slice" else "p"
    return (f"{c.name}: cannot rule out a drop beyond {cfg.tolerance:.3f} (candidate {c.candidate:.4f} "
            f"vs champion {c.champion:.4f}, lower bound {c.lower_bound:+.4f}, "
            f"{p_name} {c.p_value:.4f} >= alpha {cfg.alpha})")


def decide(candidate: dict, champion: dict | None, cfg: GateConfig, seed: int = 0) -> GateDecision:
    """`candidate`/`champion` are `tasks.evaluate.evaluate` results on the same exam;
    `champion` None before the first promotion (only the new batch is judged)."""
    rows = candidate["rows"]
    cand = np.asarray(rows["correct"], dtype=int)
    new = np.asarray(rows["is_new"], dtype=bool)
    checks: list[Check] = []
    if champion is not None and (~new).any():
        champ = np.asarray(champion["rows"]["correct"], dtype=int)
        groups = _groups(np.asarray(rows["slice"], dtype=object), ~new, cfg.min_slice_size)
        checks += _old_checks(cand, champ, groups, cfg, seed)
        checks.append(_overall_check(cand[~new], champ[~new], cfg, seed))
    checks.append(_new_check(cand[new], cfg))
    failed = [c for c in checks if not c.passed]
    notes = [_reason(c, cfg) for c in checks if c.verdict == "unjudgeable"]
    reasons = [_reason(c, cfg) for c in failed] or [f"all {len(checks) - len(notes)} judged checks passed"]
    return GateDecision(promote=not failed, reasons=reasons + notes, checks=checks)


# --- Prefect edge ------------------------------------------------------------------
from prefect import task  # noqa: E402


@task(name="gate")
def gate_task(candidate: dict, champion: dict | None, cfg: GateConfig, seed: int = 0) -> GateDecision:
    return decide(candidate, champion, cfg, seed)


def main() -> None:
    """dvc stage `gate`: the decision for the audited candidate, as the flow would take it."""
    from tasks import pipeline

    p = pipeline.params()
    sheets = pipeline.read_json(pipeline.BUILD / "evaluate" / "scores.json")
    champion = sheets["champion"] if pipeline.parent(p) else None
    decision = decide(sheets["candidate"], champion, p.gate, p.train.seed)
    out = pipeline.stage_dir("gate")
    pipeline.write_json(out / "decision.json", {**decision.to_dict(), "table": decision.markdown()})
    pipeline.write_json(out / "metrics.json", {
        "promote": decision.promote, "checks": len(decision.checks),
        "failed_checks": sum(not c.passed for c in decision.checks),
        **{f"candidate.{c.name}": c.candidate for c in decision.checks}})


if __name__ == "__main__":
    main()
