"""Gate: promote only when nothing production knew got worse and the new batch was learned.

A pure function over per-row exam outcomes (`tasks.evaluate.evaluate` results). Every
check is a paired non-inferiority test on the rows both models answered (Tango's score
test, tasks/gate_stats.py) and becomes a row of decision.json and of a Markdown table:

- **per step**: each old slice, and the old exam as a whole, against the champion at
  `gate.tolerance`;
- **floor**: each old slice against the best version of production's lineage on it
  (from the per-row answers stored with each version), at `gate.max_total_drop`, so a
  run of small passing drops cannot add up to erosion;
- **negative flips**: rows the champion answered right and the candidate wrong, as a
  share of the old exam; fails when a one-sided binomial test shows it above
  `gate.max_negative_flip_rate` (per-slice counts are in every slice row);
- **new batch**: its held-out rows reach `gate.min_new_slice_score`.

Why no Holm correction: the candidate is promoted only when *every* check passes, an
intersection-union test (Berger 1982), whose false-acceptance rate is at most `alpha`
without any adjustment. The multiplicity cost falls on false rejection instead, so the
power is planned: a slice is judged at max(margin, the drop its rows can detect with
power 1 - gate.max_false_rejection / checks) and reported as "low power" when its
margin had to be widened; low-power slices are also judged pooled. The operating
characteristic of these rules is simulated in benchmarks/gate_oc.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from tasks.config import GateConfig
from tasks.gate_stats import Paired, detectable_margin, lower_bound, score_test

POOLED = "small slices (pooled)"
LOW_POWER_POOL = "low-power slices (pooled)"


@dataclass(frozen=True)
class Check:
    name: str
    kind: str                  # old_slice | old_overall | floor | flips | new_batch
    rows: int
    champion: float | None     # the reference's score: the champion, or the best version for a floor
    candidate: float
    lower_bound: float | None  # one-sided lower confidence bound on candidate - reference
    p_value: float | None      # p of "worse by more than the margin"
    threshold: float           # -margin for old rows, the limit for flips, min score for the new batch
    verdict: str               # pass | FAIL | unjudgeable
    reference: str | None = None  # champion | a version id (floor) | None
    low_power: bool = False    # the margin was widened beyond the configured one
    neg_flips: int | None = None  # reference right, candidate wrong
    pos_flips: int | None = None  # reference wrong, candidate right

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
        lines = ["| check | rows | reference | ref score | candidate | delta | lower bound | p | threshold "
                 "| flips -/+ | verdict |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in self.checks:
            delta = None if c.champion is None else c.candidate - c.champion
            flips = "-" if c.neg_flips is None else f"{c.neg_flips}/{c.pos_flips}"
            verdict = c.verdict + (" (low power)" if c.low_power else "")
            lines.append(f"| {c.name} | {c.rows} | {c.reference or '-'} | {fmt(c.champion, '.4f')} | "
                         f"{c.candidate:.4f} | {fmt(delta, '+.4f')} | {fmt(c.lower_bound, '+.4f')} | "
                         f"{fmt(c.p_value, '.4f')} | {c.threshold:+.4f} | {flips} | {verdict} |")
        return "\n".join(lines)


@dataclass(frozen=True)
class Plan:
    """The level and per-check power every paired check of one decision is planned with."""

    alpha: float
    beta: float
    discordance: float  # planning churn: share of rows an unchanged candidate answers differently


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


def paired_check(name: str, kind: str, cand: np.ndarray, ref: np.ndarray, *, margin: float, plan: Plan,
                 reference: str, min_rows: int) -> Check:
    """One non-inferiority row: candidate vs reference on the same rows at max(margin,
    what these rows can detect)."""
    counts = Paired.of(cand, ref)
    base = dict(rows=counts.n, champion=round(float(ref.mean()), 4), candidate=round(float(cand.mean()), 4),
                reference=reference, neg_flips=counts.neg, pos_flips=counts.pos)
    if counts.n < min_rows:
        return Check(name, kind, lower_bound=None, p_value=None, threshold=-margin, verdict="unjudgeable", **base)
    # planned on the churn, estimated from positive flips (a regression adds negative ones,
    # which must not buy it a wider margin): exam-wide, this slice's, or the configured least
    spread = max(plan.discordance, 2 * counts.pos / counts.n)
    widened = detectable_margin(counts.n, spread, alpha=plan.alpha, beta=plan.beta, floor=margin)
    p = score_test(counts, widened)
    return Check(name, kind, lower_bound=round(lower_bound(counts, plan.alpha), 4), p_value=round(p, 4),
                 threshold=-round(widened, 4), verdict="pass" if p < plan.alpha else "FAIL",
                 low_power=widened > margin + 1e-9, **base)


def _family(name_of, kind: str, cand: np.ndarray, refs: dict, masks: dict, *, margin: float, plan: Plan,
            min_rows: int, pool: bool = True) -> list[Check]:
    """Checks for named row groups against per-group references (a dict of (name, array))
    plus, with `pool`, one pooled check over the low-power groups when there are two or more."""
    checks = [paired_check(name_of(g), kind, cand[m], refs[g][1][m], margin=margin, plan=plan,
                           reference=refs[g][0], min_rows=min_rows) for g, m in masks.items()]
    low = [g for g, c in zip(masks, checks) if c.low_power]
    if pool and len(low) >= 2:
        rows = np.logical_or.reduce([masks[g] for g in low])
        ref = np.zeros(cand.size, dtype=int)
        for g in low:
            ref[masks[g]] = refs[g][1][masks[g]]
        checks.append(paired_check(name_of(LOW_POWER_POOL), kind, cand[rows], ref[rows], margin=margin,
                                   plan=plan, reference="mixed" if kind == "floor" else "champion",
                                   min_rows=min_rows))
    return checks


def best_versions(keys: np.ndarray, masks: dict[str, np.ndarray], history: dict) -> dict:
    """For each row group, the lineage version with the best accuracy on it among those
    that answered every one of its rows (later versions win ties): {group: (version, per-row
    correct aligned with `keys`)}. `history`: {version: {row key: 1/0} or a Series by key}."""
    aligned = {v: pd.Series(a, dtype="float64").reindex(keys).fillna(-1).to_numpy(dtype=int)
               for v, a in history.items()}
    out = {}
    for group, mask in masks.items():
        best = None
        for version, got in aligned.items():
            if not mask.any() or (got[mask] < 0).any():
                continue
            score = got[mask].mean()
            if best is None or score >= best[2]:
                best = (version, np.where(mask, got, 0), score)
        if best is not None:
            out[group] = best[:2]
    return out


def _flip_check(cand: np.ndarray, champ: np.ndarray, cfg: GateConfig) -> Check:
    """Fails when the negative flip rate is shown above the limit (one-sided exact binomial
    test at alpha): a small exam with a few unlucky rows is not a regression."""
    from scipy.stats import binomtest

    counts = Paired.of(cand, champ)
    rate = round(counts.neg / counts.n, 4) if counts.n else 0.0
    limit = cfg.max_negative_flip_rate
    p = float(binomtest(counts.neg, counts.n, limit, alternative="greater").pvalue) if counts.n and limit < 1 else 1.0
    return Check("negative flips (old exam)", "flips", counts.n, None, rate, None, round(p, 4), limit,
                 "FAIL" if p < cfg.alpha else "pass", reference="champion", neg_flips=counts.neg,
                 pos_flips=counts.pos)


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
    if c.kind == "flips":
        return (f"{c.name}: {c.neg_flips} of {c.rows} rows the champion answered right are now wrong "
                f"({c.candidate:.2%}, above gate.max_negative_flip_rate {cfg.max_negative_flip_rate:.2%} "
                f"at p {c.p_value:.4f})")
    if c.verdict == "unjudgeable":
        return f"{c.name}: only {c.rows} held-out rows (< gate.min_slice_size), not judged"
    against = f"its best in the lineage, {c.reference}" if c.kind == "floor" else "the champion"
    return (f"{c.name}: cannot rule out a drop beyond {-c.threshold:.3f} against {against} "
            f"(candidate {c.candidate:.4f} vs {c.champion:.4f}, lower bound {c.lower_bound:+.4f}, "
            f"p {c.p_value:.4f} >= alpha {cfg.alpha})")


def _plan(cfg: GateConfig, n_checks: int, pairs: list[tuple[np.ndarray, np.ndarray]]) -> Plan:
    """`pairs`: (candidate, reference) answers on the rows each reference is compared on."""
    churn = [2 * Paired.of(c, r).pos / max(c.size, 1) for c, r in pairs]
    return Plan(cfg.alpha, cfg.max_false_rejection / max(n_checks, 1), max([cfg.planning_flip_rate, *churn]))


def decide(candidate: dict, champion: dict | None, cfg: GateConfig, seed: int = 0,
           history: dict[str, dict[str, int]] | None = None) -> GateDecision:
    """`candidate`/`champion` are `tasks.evaluate.evaluate` results on the same exam;
    `champion` None before the first promotion (only the new batch is judged). `history`:
    {version: {exam row key: 1/0}} of production's lineage, for the floor. `seed` is
    unused since the test is closed-form; kept so every gate has the same signature."""
    rows = candidate["rows"]
    cand = np.asarray(rows["correct"], dtype=int)
    new = np.asarray(rows["is_new"], dtype=bool)
    old = ~new
    checks: list[Check] = []
    if champion is not None and old.any():
        champ = np.asarray(champion["rows"]["correct"], dtype=int)
        masks = _groups(np.asarray(rows["slice"], dtype=object), old, cfg.min_slice_size)
        best = best_versions(np.asarray(rows.get("key", [""] * cand.size), dtype=object), masks, history or {})
        floor_rows = np.logical_or.reduce([masks[g] for g in best]) if best else old
        floor_ref = np.sum([b[1] for b in best.values()], axis=0) if best else champ
        # the planned false rejection is split over every test: slices, their pool, the overall
        # exam, and each floor once per version its best was picked from (see below)
        plan = _plan(cfg, 2 + len(masks) + len(best) * max(len(history or {}), 1), [(cand[old], champ[old]), (cand[floor_rows], floor_ref[floor_rows])])
        step = {g: ("champion", champ) for g in masks}
        checks += _family(lambda g: f"slice:{g}", "old_slice", cand, step, masks, margin=cfg.tolerance, plan=plan,
                          min_rows=cfg.min_slice_size)
        checks.append(paired_check("old exam overall", "old_overall", cand[old], champ[old], margin=cfg.tolerance,
                                   plan=plan, reference="champion", min_rows=1))
        # the best of L versions is biased upward (the luckiest one on these rows): a union
        # bound over the L versions it was picked from keeps the floor's false rejection
        # planned. Pooling bests of different slices would compound that bias: the pooled
        # step check already covers a drop spread over many small slices.
        checks += _family(lambda g: f"floor:{g}", "floor", cand, best, {g: masks[g] for g in best},
                          margin=cfg.max_total_drop, plan=plan, min_rows=cfg.min_slice_size, pool=False)
        checks.append(_flip_check(cand[old], champ[old], cfg))
    checks.append(_new_check(cand[new], cfg))
    failed = [c for c in checks if not c.passed]
    notes = [_reason(c, cfg) for c in checks if c.verdict == "unjudgeable"]
    notes += [f"{c.name}: low power, judged at a {-c.threshold:.3f} margin ({c.rows} rows)"
              for c in checks if c.low_power and c.passed]
    judged = sum(c.verdict != "unjudgeable" for c in checks)
    reasons = [_reason(c, cfg) for c in failed] or [f"all {judged} judged checks passed"]
    return GateDecision(promote=not failed, reasons=reasons + notes, checks=checks)


def flipped_rows(candidate: dict, champion: dict, exam, cap: int) -> list[dict]:
    """Old exam rows whose answer changed between champion and candidate (negative flips
    first), with both answers, for review; at most `cap` rows."""
    rows, champ_rows = candidate["rows"], champion["rows"]
    out = []
    for direction, want in (("negative", (1, 0)), ("positive", (0, 1))):
        for i, (new, c, h) in enumerate(zip(rows["is_new"], rows["correct"], champ_rows["correct"])):
            if not new and (h, c) == want and len(out) < cap:
                out.append({"key": rows["key"][i], "slice": rows["slice"][i], "text": str(exam["text"].iloc[i]),
                            "label": str(exam["label"].iloc[i]), "champion": champ_rows["pred"][i],
                            "candidate": rows["pred"][i], "flip": direction})
    return out


# --- Prefect edge ------------------------------------------------------------------
from prefect import task  # noqa: E402


@task(name="gate")
def gate_task(candidate: dict, champion: dict | None, cfg: GateConfig, seed: int = 0,
              history: dict | None = None) -> GateDecision:
    return decide(candidate, champion, cfg, seed, history)


def main() -> None:
    """dvc stage `gate`: the decision for the audited candidate, as the flow would take it."""
    from tasks import pipeline

    p = pipeline.params()
    sheets = pipeline.read_json(pipeline.BUILD / "evaluate" / "scores.json")
    champion = sheets["champion"] if pipeline.parent(p) else None
    decision = decide(sheets["candidate"], champion, p.gate, p.train.seed, sheets.get("history"))
    out = pipeline.stage_dir("gate")
    pipeline.write_json(out / "decision.json", {**decision.to_dict(), "table": decision.markdown()})
    pipeline.write_json(out / "metrics.json", {
        "promote": decision.promote, "checks": len(decision.checks),
        "failed_checks": sum(not c.passed for c in decision.checks),
        **{f"candidate.{c.name}": c.candidate for c in decision.checks}})


if __name__ == "__main__":
    main()
