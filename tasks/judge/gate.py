"""Gate: promote only when nothing production knew got worse and the new batch was learned.

A pure function over per-row exam outcomes (`tasks.judge.evaluate.evaluate` results). Every
check is a paired non-inferiority test on the rows both models answered (Tango's score
test, tasks/judge/gate_stats.py) and becomes a row of decision.json and of a Markdown table:

- **per step**: each old slice, and the old exam as a whole, against the champion at
  `gate.tolerance`;
- **floor**: each old slice against the best version of production's lineage on it
  (from the per-row answers stored with each version), at `gate.max_total_drop`, so a
  run of small passing drops cannot add up to erosion;
- **new labels** (sentence classifiers): an old row the candidate answers with a label
  its slice's best version never knew (an intent added later) is confusion with new
  labels, not forgetting: the floor leaves it out, and this check bounds it per slice,
  failing when a one-sided binomial test shows its share above
  `gate.max_new_label_confusion` (0 = no allowance: the floor counts every row);
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

from tasks.core.config import GateConfig
from tasks.judge.gate_stats import Accuracy, Paired, detectable_margin

ACCURACY = Accuracy()

POOLED = "small slices (pooled)"
LOW_POWER_POOL = "low-power slices (pooled)"


@dataclass(frozen=True)
class Check:
    name: str
    kind: str                  # old_slice | old_overall | floor | new_labels | flips | new_batch
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


def paired_check(name: str, kind: str, cand: "Outcomes", ref: "Outcomes", *, margin: float, plan: Plan,
                 reference: str, min_rows: int, stat=ACCURACY, seed: int = 0) -> Check:
    """One non-inferiority row: candidate vs reference on the same rows at max(margin,
    what these rows can detect) when the statistic plans its power, else at margin."""
    counts = Paired.of(cand.correct, ref.correct)
    base = dict(rows=counts.n, champion=round(stat.score(ref.values), 4), candidate=round(stat.score(cand.values), 4),
                reference=reference, neg_flips=counts.neg, pos_flips=counts.pos)
    if counts.n < min_rows:
        return Check(name, kind, lower_bound=None, p_value=None, threshold=-margin, verdict="unjudgeable", **base)
    # planned on the churn, estimated from positive flips (a regression adds negative ones,
    # which must not buy it a wider margin): exam-wide, this slice's, or the configured least
    spread = max(plan.discordance, 2 * counts.pos / counts.n)
    widened = detectable_margin(counts.n, spread, alpha=plan.alpha, beta=plan.beta, floor=margin) \
        if stat.planned else margin
    low, p = stat.test(cand.values, ref.values, widened, plan.alpha, seed)
    return Check(name, kind, lower_bound=round(low, 4), p_value=round(p, 4),
                 threshold=-round(widened, 4), verdict="pass" if p < plan.alpha else "FAIL",
                 low_power=widened > margin + 1e-9, **base)


@dataclass(frozen=True)
class Outcomes:
    """One model's per-row outcomes: what the statistic reads, and right (1) / wrong (0)."""

    values: np.ndarray
    correct: np.ndarray

    def __getitem__(self, mask) -> "Outcomes":
        return Outcomes(self.values[mask], self.correct[mask])

    def where(self, mask: np.ndarray) -> "Outcomes":
        """These outcomes on the rows of `mask`, zero elsewhere (same length)."""
        rows = mask.reshape(-1, *[1] * (self.values.ndim - 1))
        return Outcomes(np.where(rows, self.values, 0), np.where(mask, self.correct, 0))

    @staticmethod
    def combine(parts: list["Outcomes"]) -> "Outcomes":
        """Outcomes of disjoint row groups (each zero outside its group) as one."""
        return Outcomes(np.sum([p.values for p in parts], axis=0), np.sum([p.correct for p in parts], axis=0))

    @classmethod
    def of(cls, table, stat) -> "Outcomes":
        return cls(stat.values(table), np.asarray(table["correct"], dtype=int))


def _family(name_of, kind: str, cand: Outcomes, refs: dict, masks: dict, *, margin: float, plan: Plan,
            min_rows: int, pool: bool = True, stat=ACCURACY, seed: int = 0) -> list[Check]:
    """Checks for named row groups against per-group references (a dict of (name, Outcomes))
    plus, with `pool`, one pooled check over the low-power groups when there are two or more."""
    checks = [paired_check(name_of(g), kind, cand[m], refs[g][1][m], margin=margin, plan=plan,
                           reference=refs[g][0], min_rows=min_rows, stat=stat, seed=seed) for g, m in masks.items()]
    low = [g for g, c in zip(masks, checks) if c.low_power]
    if pool and len(low) >= 2:
        rows = np.logical_or.reduce([masks[g] for g in low])
        ref = Outcomes.combine([refs[g][1].where(masks[g]) for g in low])
        checks.append(paired_check(name_of(LOW_POWER_POOL), kind, cand[rows], ref[rows], margin=margin,
                                   plan=plan, reference="mixed" if kind == "floor" else "champion",
                                   min_rows=min_rows, stat=stat, seed=seed))
    return checks


def answers_table(answers) -> pd.DataFrame:
    """A version's stored answers as a table indexed by row key: a DataFrame as written by
    tasks/judge/answers.py, a Series of 1/0 by key, or their JSON forms ({column: {key: value}}
    or {key: 1/0}) as the DVC evaluate stage writes them."""
    if isinstance(answers, pd.DataFrame):
        return answers
    if isinstance(answers, dict) and answers and all(isinstance(v, dict) for v in answers.values()):
        return pd.DataFrame(answers)
    return pd.DataFrame({"correct": pd.Series(answers, dtype="float64")})


def best_versions(keys: np.ndarray, masks: dict[str, np.ndarray], history: dict, stat=ACCURACY) -> dict:
    """For each row group, the lineage version with the best score on it among those that
    answered every one of its rows (later versions win ties): {group: (version, Outcomes
    aligned with `keys`, zero outside the group)}. `history`: {version: answers} (see
    `answers_table`)."""
    needed, aligned = sorted(set(stat.columns) | {"correct"}), {}
    for version, answers in history.items():
        table = answers_table(answers)
        if not set(needed) <= set(table.columns):
            continue  # answers of another statistic (or none): not comparable
        table = table.reindex(list(keys))[needed]
        aligned[version] = (table.notna().all(axis=1).to_numpy(), Outcomes.of(table.fillna(0), stat))
    out = {}
    for group, mask in masks.items():
        best = None
        for version, (answered, got) in aligned.items():
            if not mask.any() or not answered[mask].all():
                continue
            score = stat.score(got.values[mask])
            if best is None or score >= best[2]:
                best = (version, got.where(mask), score)
        if best is not None:
            out[group] = best[:2]
    return out


def _above(k: int, n: int, limit: float) -> float:
    """p of "the rate is at most `limit`" given k of n rows (one-sided exact binomial test):
    a check fails only when this is below alpha, so a few unlucky rows are not a regression."""
    from scipy.stats import binomtest

    return float(binomtest(k, n, limit, alternative="greater").pvalue) if n and limit < 1 else 1.0


def _flip_check(cand: np.ndarray, champ: np.ndarray, cfg: GateConfig) -> Check:
    """Fails when the negative flip rate is shown above the limit."""
    counts = Paired.of(cand, champ)
    rate = round(counts.neg / counts.n, 4) if counts.n else 0.0
    p = _above(counts.neg, counts.n, cfg.max_negative_flip_rate)
    return Check("negative flips (old exam)", "flips", counts.n, None, rate, None, round(p, 4),
                 cfg.max_negative_flip_rate, "FAIL" if p < cfg.alpha else "pass", reference="champion",
                 neg_flips=counts.neg, pos_flips=counts.pos)


def confused_rows(preds: np.ndarray, masks: dict, best: dict, labels: dict | None, cfg: GateConfig) -> dict:
    """Per floor group, its rows the candidate answered with a label the group's best
    version never knew ({group: mask}); empty without an allowance, without the candidate's
    answers, or for a best version whose labels are not recorded."""
    if not cfg.max_new_label_confusion or preds is None or not labels:
        return {}
    out = {}
    for group, (version, _) in best.items():
        known = labels.get(version)
        if known:
            out[group] = masks[group] & ~np.isin(preds, np.asarray(sorted(map(str, known)), dtype=object))
    return out


def _confusion_check(group: str, rows: np.ndarray, aside: np.ndarray, ref: "Outcomes", version: str,
                     cfg: GateConfig) -> Check:
    """Fails when the share of the slice's rows answered with labels its best version never
    knew is shown above gate.max_new_label_confusion; neg_flips: those of them it had right."""
    n, k = int(rows.sum()), int(aside.sum())
    p = _above(k, n, cfg.max_new_label_confusion)
    return Check(f"new labels:{group}", "new_labels", n, None, round(k / n, 4) if n else 0.0, None, round(p, 4),
                 cfg.max_new_label_confusion, "FAIL" if p < cfg.alpha else "pass", reference=version,
                 neg_flips=int(ref.correct[aside].sum()), pos_flips=0)


def _new_check(cand: Outcomes, cfg: GateConfig, stat=ACCURACY) -> Check:
    n = int(cand.correct.size)
    got = round(stat.score(cand.values), 4) if n else 0.0
    verdict = "pass" if n and got >= cfg.min_new_slice_score else "FAIL"
    name = "new batch held-out" + (f" ({stat.label})" if stat.label else "")
    return Check(name, "new_batch", n, None, got, None, None, cfg.min_new_slice_score, verdict)


def _reason(c: Check, cfg: GateConfig) -> str:
    if c.kind == "new_batch" and c.rows == 0:
        return ("the batch has no held-out rows, so learning it cannot be shown: add a `split` "
                "column with test rows, or more rows (intake.test_share of them are held out)")
    if c.kind == "new_batch":
        return f"{c.name}: candidate {c.candidate:.4f} below {cfg.min_new_slice_score:.4f}"
    if c.kind == "new_labels":
        return (f"{c.name}: {c.candidate:.2%} of its {c.rows} rows answered with labels {c.reference} never "
                f"knew, above gate.max_new_label_confusion {cfg.max_new_label_confusion:.2%} at p {c.p_value:.4f}")
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


def _plan(cfg: GateConfig, n_checks: int, pairs: list[tuple[Outcomes, Outcomes]]) -> Plan:
    """`pairs`: (candidate, reference) answers on the rows each reference is compared on."""
    churn = [2 * Paired.of(c.correct, r.correct).pos / max(c.correct.size, 1) for c, r in pairs]
    return Plan(cfg.alpha, cfg.max_false_rejection / max(n_checks, 1), max([cfg.planning_flip_rate, *churn]))


def decide(candidate: dict, champion: dict | None, cfg: GateConfig, seed: int = 0,
           history: dict | None = None, stat=ACCURACY, labels: dict | None = None) -> GateDecision:
    """`candidate`/`champion` are score sheets on the same exam (their "rows": per-row
    outcomes, slice, is_new, key, pred); `champion` None before the first promotion (only the
    new batch is judged). `history`: {version: answers} of production's lineage, for the
    floor; `labels`: {version: the labels it knew}, which lets the floor tell forgetting from
    confusion with labels learned later (sentence classifiers: accuracy only). `stat`: the
    task type's statistic (accuracy, entity F1); `seed` its bootstrap's."""
    rows = candidate["rows"]
    cand = Outcomes.of(rows, stat)
    new = np.asarray(rows["is_new"], dtype=bool)
    old = ~new
    checks: list[Check] = []
    if champion is not None and old.any():
        champ = Outcomes.of(champion["rows"], stat)
        masks = _groups(np.asarray(rows["slice"], dtype=object), old, cfg.min_slice_size)
        keys = np.asarray(rows.get("key", [""] * len(new)), dtype=object)
        best = best_versions(keys, masks, history or {}, stat)
        floor_rows = np.logical_or.reduce([masks[g] for g in best]) if best else old
        floor_ref = Outcomes.combine([b[1] for b in best.values()]) if best else champ
        # the planned false rejection is split over every test: slices, their pool, the overall
        # exam, and each floor once per version its best was picked from (see below)
        plan = _plan(cfg, 2 + len(masks) + len(best) * max(len(history or {}), 1),
                     [(cand[old], champ[old]), (cand[floor_rows], floor_ref[floor_rows])])
        step = {g: ("champion", champ) for g in masks}
        common = dict(plan=plan, stat=stat, seed=seed)
        checks += _family(lambda g: f"slice:{g}", "old_slice", cand, step, masks, margin=cfg.tolerance,
                          min_rows=cfg.min_slice_size, **common)
        checks.append(paired_check("old exam overall", "old_overall", cand[old], champ[old], margin=cfg.tolerance,
                                   reference="champion", min_rows=1, **common))
        # the best of L versions is biased upward (the luckiest one on these rows): a union
        # bound over the L versions it was picked from keeps the floor's false rejection
        # planned. Pooling bests of different slices would compound that bias: the pooled
        # step check already covers a drop spread over many small slices.
        preds = np.asarray(rows["pred"], dtype=object) if isinstance(stat, Accuracy) and "pred" in rows else None
        aside = confused_rows(preds, masks, best, labels, cfg)
        checks += _family(lambda g: f"floor:{g}", "floor", cand, best,
                          {g: masks[g] & ~aside[g] if g in aside else masks[g] for g in best},
                          margin=cfg.max_total_drop, min_rows=cfg.min_slice_size, pool=False, **common)
        checks += [_confusion_check(g, masks[g], a, best[g][1], best[g][0], cfg) for g, a in aside.items() if a.any()]
        checks.append(_flip_check(cand.correct[old], champ.correct[old], cfg))
    checks.append(_new_check(cand[new], cfg, stat))
    failed = [c for c in checks if not c.passed]
    notes = [_reason(c, cfg) for c in checks if c.verdict == "unjudgeable"]
    notes += [f"{c.name}: low power, judged at a {-c.threshold:.3f} margin ({c.rows} rows)"
              for c in checks if c.low_power and c.passed]
    judged = sum(c.verdict != "unjudgeable" for c in checks)
    reasons = [_reason(c, cfg) for c in failed] or [f"all {judged} judged checks passed"]
    return GateDecision(promote=not failed, reasons=reasons + notes, checks=checks)


def flipped_rows(candidate: dict, champion: dict, texts: list[str], golds: list[str], cap: int) -> list[dict]:
    """Old exam rows whose answer changed between champion and candidate (negative flips
    first), with the row's text, its gold answer and both answers, for review; at most
    `cap` rows."""
    rows, champ_rows = candidate["rows"], champion["rows"]
    out = []
    for direction, want in (("negative", (1, 0)), ("positive", (0, 1))):
        for i, (new, c, h) in enumerate(zip(rows["is_new"], rows["correct"], champ_rows["correct"])):
            if not new and (h, c) == want and len(out) < cap:
                out.append({"key": rows["key"][i], "slice": rows["slice"][i], "text": texts[i],
                            "label": golds[i], "champion": champ_rows["pred"][i],
                            "candidate": rows["pred"][i], "flip": direction})
    return out
