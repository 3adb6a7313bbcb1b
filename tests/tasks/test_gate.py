"""Gate: paired non-inferiority per old slice against the champion and against the
lineage's best (the floor), negative flips, planned power; the new batch must be learned."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.core.config import GateConfig
from tasks.judge.gate import LOW_POWER_POOL, POOLED, GateDecision, decide, flipped_rows
from tasks.judge.gate_stats import Accuracy, Paired, detectable_margin, lower_bound, score_test

CFG = GateConfig(tolerance=0.05, alpha=0.05, min_slice_size=20, min_new_slice_score=0.5, max_total_drop=0.03,
                 max_negative_flip_rate=0.05, max_false_rejection=0.1)


def outcomes(acc: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """n rows of 0/1 with exactly round(acc * n) ones, in random order."""
    row = np.zeros(n, dtype=int)
    row[: int(round(acc * n))] = 1
    return rng.permutation(row)


def flip(h: np.ndarray, k: int) -> np.ndarray:
    """k > 0: the first k right rows turn wrong; k < 0: the first |k| wrong rows turn right."""
    c = h.copy()
    idx = np.flatnonzero(h == (1 if k > 0 else 0))[: abs(k)]
    c[idx] = 0 if k > 0 else 1
    return c


def exam(champion: dict[str, tuple[float, int]], flips: dict[str, int], new: tuple[float, int], seed=0):
    """Evaluate-shaped results for champion and candidate on the same exam.

    champion: slice -> (champion accuracy, rows); flips: slice -> net rows the candidate
    gets wrong that the champion got right (negative = improves); new: (candidate
    accuracy, rows) on the new batch."""
    rng = np.random.default_rng(seed)
    slices, champ, cand, keys = [], [], [], []
    for name, (acc, n) in champion.items():
        h = outcomes(acc, n, rng)
        slices += [name] * n
        keys += [f"{name}:{i}" for i in range(n)]
        champ += h.tolist()
        cand += flip(h, flips.get(name, 0)).tolist()
    new_acc, new_n = new
    new_rows = outcomes(new_acc, new_n, rng).tolist()
    is_new = [False] * len(slices) + [True] * new_n
    keys += [f"new:{i}" for i in range(new_n)]

    def rows(correct):
        return {"slice": slices + ["new"] * new_n, "is_new": is_new, "correct": correct, "key": keys,
                "pred": ["x" if c else "y" for c in correct]}
    return {"rows": rows(cand + new_rows)}, {"rows": rows(champ + [0] * new_n)}


def by_name(decision: GateDecision) -> dict:
    return {c.name: c for c in decision.checks}


CASES = [
    # id, champion slices, candidate flips, new batch, promote, failing check names
    ("identical-models", {"a": (0.9, 450), "b": (0.9, 450)}, {}, (0.9, 450), True, []),
    ("noise-within-tolerance", {"a": (0.95, 450), "b": (0.95, 450)}, {"a": 5, "b": -3}, (0.9, 450), True, []),
    ("clear-drop-on-one-slice", {"a": (0.95, 450), "b": (0.95, 450)}, {"b": 60}, (0.9, 450), False,
     ["slice:b", "old exam overall", "negative flips (old exam)"]),
    ("drop-on-one-slice-hidden-in-the-average", {"a": (0.9, 450), "b": (0.9, 450), "c": (0.9, 450)},
     {"b": 45, "a": -20, "c": -20}, (0.9, 450), False, ["slice:b"]),
    ("improvement-everywhere", {"a": (0.8, 450)}, {"a": -30}, (0.9, 450), True, []),
    ("new-batch-not-learned", {"a": (0.9, 450)}, {}, (0.2, 450), False, ["new batch held-out"]),
    # 40 rows cannot defend 0.05: judged at a wider margin, reported as low power, not failed
    ("small-slice-one-lost-row-is-low-power-not-a-failure", {"a": (0.9, 40), "b": (0.9, 450)}, {"a": 1},
     (0.9, 100), True, []),
    # ... but a collapse on a small slice is still caught
    ("small-slice-collapse-fails", {"a": (0.9, 40), "b": (0.9, 450)}, {"a": 20}, (0.9, 100), False,
     ["slice:a", "old exam overall"]),
]


@pytest.mark.parametrize("champion,flips,new,promote,failing", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide_table(champion, flips, new, promote, failing):
    cand, champ = exam(champion, flips, new)
    decision = decide(cand, champ, CFG)
    assert decision.promote is promote, decision.markdown()
    assert sorted(c.name for c in decision.checks if not c.passed) == sorted(failing), decision.markdown()
    for name in failing:
        assert any(name in reason for reason in decision.reasons)
    if promote:
        assert decision.reasons[0].startswith("all ")


def test_every_old_slice_and_the_overall_exam_get_a_row_with_bounds_and_flips():
    cand, champ = exam({"a": (0.9, 450), "b": (0.8, 300)}, {"a": 2}, (0.9, 100))
    checks = by_name(decide(cand, champ, CFG))
    assert set(checks) == {"slice:a", "slice:b", "old exam overall", "negative flips (old exam)",
                           "new batch held-out"}
    a = checks["slice:a"]
    assert a.rows == 450 and a.champion == 0.9 and a.candidate == pytest.approx(0.9 - 2 / 450, abs=1e-4)
    assert a.lower_bound is not None and a.lower_bound <= a.candidate - a.champion
    assert (a.neg_flips, a.pos_flips) == (2, 0)
    assert checks["old exam overall"].rows == 750
    assert checks["new batch held-out"].lower_bound is None


def test_flip_counts_match_a_hand_count():
    champ = np.array([1, 1, 1, 0, 0, 1, 0, 1, 1, 1] * 3)
    cand = np.array([1, 0, 1, 1, 0, 0, 0, 1, 1, 0] * 3)
    # by hand, per 10: champion right & candidate wrong at 1, 5, 9 -> 3; the reverse at 3 -> 1
    rows = lambda c: {"slice": ["s"] * 30, "is_new": [False] * 30, "correct": c.tolist(),  # noqa: E731
                      "key": [str(i) for i in range(30)], "pred": ["p"] * 30}
    checks = by_name(decide({"rows": rows(cand)}, {"rows": rows(champ)}, CFG))
    assert (checks["slice:s"].neg_flips, checks["slice:s"].pos_flips) == (9, 3)
    flips = checks["negative flips (old exam)"]
    assert flips.candidate == pytest.approx(9 / 30, abs=1e-4) and flips.verdict == "FAIL"


def test_flipped_rows_lists_both_answers_negative_first_and_is_capped():
    cand, champ = exam({"a": (0.9, 100)}, {"a": 3}, (0.9, 10))
    cand["rows"]["correct"][-11] = 1  # noqa: a positive flip on a wrong row would need a wrong row
    got = flipped_rows(cand, champ, [f"t{i}" for i in range(110)], ["x"] * 110, cap=2)
    assert len(got) == 2 and all(r["flip"] == "negative" for r in got)
    assert {"key", "slice", "text", "label", "champion", "candidate"} <= set(got[0])


def history_of(versions: dict[str, np.ndarray], keys: list[str]) -> dict:
    return {v: dict(zip(keys, c.tolist())) for v, c in versions.items()}


def test_erosion_below_the_floor_is_refused_even_when_the_step_passes():
    rng = np.random.default_rng(1)
    best = outcomes(0.97, 900, rng)           # v0001 on slice a, its best
    champ = flip(best, 18)                    # v0002: -0.02, passed its own step
    cand = flip(champ, 18)                    # candidate: another -0.02 (-0.04 below the best)
    keys = [f"a:{i}" for i in range(900)]
    rows = lambda c: {"slice": ["a"] * 900 + ["new"] * 50, "is_new": [False] * 900 + [True] * 50,  # noqa: E731
                      "correct": c.tolist() + [1] * 50, "key": keys + [f"n:{i}" for i in range(50)],
                      "pred": ["p"] * 950}
    history = history_of({"v0001": best, "v0002": champ}, keys)
    decision = decide({"rows": rows(cand)}, {"rows": rows(champ)}, CFG, history=history)
    checks = by_name(decision)
    assert checks["slice:a"].passed, decision.markdown()
    floor = checks["floor:a"]
    assert floor.verdict == "FAIL" and floor.reference == "v0001" and floor.champion == pytest.approx(0.97, abs=1e-3)
    assert not decision.promote and any("best in the lineage" in r for r in decision.reasons)
    # without the history there is no floor, and the same candidate passes
    assert decide({"rows": rows(cand)}, {"rows": rows(champ)}, CFG).promote


def _confusion_case(lost_to_new: int, lost_to_old: int, n: int = 900):
    """Slice a (gold "a1"/"a2"), best version v0001 knew a1, a2: the candidate, which also
    knows "n1" (a label added later), gets `lost_to_new` rows of a wrong by answering n1 and
    `lost_to_old` by answering another old label."""
    rng = np.random.default_rng(2)
    best = outcomes(0.97, n, rng)
    gold = np.where(np.arange(n) % 2 == 0, "a1", "a2").astype(object)
    other = np.where(gold == "a1", "a2", "a1").astype(object)
    pred_best = np.where(best == 1, gold, other)
    cand = best.copy()
    right = np.flatnonzero(best == 1)
    pred_cand = pred_best.copy()
    pred_cand[right[:lost_to_new]] = "n1"
    pred_cand[right[lost_to_new:lost_to_new + lost_to_old]] = other[right[lost_to_new:lost_to_new + lost_to_old]]
    cand[right[:lost_to_new + lost_to_old]] = 0
    keys = [f"a:{i}" for i in range(n)]
    rows = lambda c, p: {"slice": ["a"] * n + ["new"] * 50, "is_new": [False] * n + [True] * 50,  # noqa: E731
                         "correct": c.tolist() + [1] * 50, "key": keys + [f"n:{i}" for i in range(50)],
                         "pred": p.tolist() + ["n1"] * 50}
    history = history_of({"v0001": best}, keys)
    return {"rows": rows(cand, pred_cand)}, {"rows": rows(best, pred_best)}, history


def test_the_floor_leaves_out_rows_answered_with_labels_its_best_version_never_knew():
    # 36 rows (4 points) lost to a label added later: forgetting nothing v0001 knew
    cand, champ, history = _confusion_case(lost_to_new=36, lost_to_old=0)
    labels = {"v0001": ["a1", "a2"]}
    strict = decide(cand, champ, GateConfig(**{**CFG.__dict__, "max_new_label_confusion": 0.0}), history=history,
                    labels=labels)
    assert by_name(strict)["floor:a"].verdict == "FAIL", strict.markdown()
    cfg = GateConfig(**{**CFG.__dict__, "max_new_label_confusion": 0.05, "tolerance": 0.06})
    decision = decide(cand, champ, cfg, history=history, labels=labels, stat=Accuracy())  # as the flow passes it
    checks = by_name(decision)
    assert checks["floor:a"].passed and checks["floor:a"].rows == 900 - 36, decision.markdown()
    confusion = checks["new labels:a"]
    assert confusion.kind == "new_labels" and confusion.reference == "v0001" and confusion.passed
    assert confusion.candidate == pytest.approx(36 / 900, abs=1e-4) and confusion.neg_flips == 36
    assert decision.promote, decision.markdown()
    # without the versions' labels nothing is set aside: the strict floor
    assert by_name(decide(cand, champ, cfg, history=history))["floor:a"].verdict == "FAIL"


def test_rows_lost_to_labels_the_best_version_knew_still_count_as_forgetting():
    cand, champ, history = _confusion_case(lost_to_new=9, lost_to_old=36)
    cfg = GateConfig(**{**CFG.__dict__, "max_new_label_confusion": 0.05, "tolerance": 0.06})
    decision = decide(cand, champ, cfg, history=history, labels={"v0001": ["a1", "a2"]})
    assert by_name(decision)["floor:a"].verdict == "FAIL" and not decision.promote, decision.markdown()


def test_confusion_with_new_labels_beyond_the_allowance_fails():
    cand, champ, history = _confusion_case(lost_to_new=135, lost_to_old=0)  # 15% of the slice
    cfg = GateConfig(**{**CFG.__dict__, "max_new_label_confusion": 0.05, "tolerance": 0.2})
    decision = decide(cand, champ, cfg, history=history, labels={"v0001": ["a1", "a2"]})
    checks = by_name(decision)
    assert checks["floor:a"].passed and checks["new labels:a"].verdict == "FAIL", decision.markdown()
    assert not decision.promote and any("never knew" in r for r in decision.reasons)


def test_the_floor_uses_only_versions_that_answered_every_row_of_the_slice():
    cand, champ = exam({"a": (0.9, 100)}, {}, (0.9, 10))
    keys = cand["rows"]["key"]
    partial = {k: 1 for k in keys[:50]}  # a perfect score on half the rows must not become the floor
    full = dict(zip(keys, champ["rows"]["correct"]))
    checks = by_name(decide(cand, champ, CFG, history={"v0001": partial, "v0002": full}))
    assert checks["floor:a"].reference == "v0002" and checks["floor:a"].passed


def test_many_unchanged_slices_pass_without_a_multiplicity_penalty():
    # eight 200-row slices with 4 rows flipped each way: no change at all
    cand, champ = exam({f"s{i}": (0.9, 200) for i in range(8)}, {}, (0.9, 100))
    for start in range(0, 1600, 200):
        for i in range(start, start + 4):
            cand["rows"]["correct"][i] = 1 - cand["rows"]["correct"][i]
    decision = decide(cand, champ, CFG)
    assert decision.promote, decision.markdown()


def test_tiny_slices_are_pooled_and_several_low_power_slices_are_judged_together():
    cand, champ = exam({"a": (0.9, 450), "t1": (0.9, 10), "t2": (0.9, 10)}, {}, (0.9, 100))
    assert by_name(decide(cand, champ, CFG))[f"slice:{POOLED}"].rows == 20
    cand, champ = exam({"a": (0.9, 450), "b": (0.9, 40), "c": (0.9, 40)}, {"b": 1, "c": 1}, (0.9, 100))
    decision = decide(cand, champ, CFG)
    checks = by_name(decision)
    assert checks["slice:b"].low_power and checks["slice:c"].low_power
    assert checks[f"slice:{LOW_POWER_POOL}"].rows == 80
    assert any("low power" in r for r in decision.reasons)


def test_first_batch_judges_only_the_new_batch():
    cand, _ = exam({}, {}, (0.8, 100))
    decision = decide(cand, None, CFG)
    assert [c.kind for c in decision.checks] == ["new_batch"] and decision.promote


def test_a_batch_without_held_out_rows_is_rejected_with_a_reason_that_says_so():
    cand, champ = exam({"a": (0.9, 450)}, {}, (0.0, 0))
    decision = decide(cand, champ, CFG)
    assert not decision.promote
    assert any("no held-out rows" in r for r in decision.reasons)


def test_score_test_is_mcnemar_at_margin_zero_and_the_bound_tracks_the_difference():
    from scipy.stats import norm

    p = Paired(n=400, neg=30, pos=10)
    assert score_test(p, 0.0) == pytest.approx(norm.sf((10 - 30) / np.sqrt(40)), rel=1e-9)
    lb = lower_bound(p, 0.05)
    assert lb < p.diff and score_test(p, -lb) == pytest.approx(0.05, abs=1e-3)
    assert score_test(Paired(400, 0, 0), 0.05) < 0.05 < score_test(Paired(40, 0, 0), 0.05)


def test_detectable_margin_shrinks_with_rows_and_never_goes_below_the_floor():
    margins = [detectable_margin(n, 0.06, alpha=0.05, beta=0.01, floor=0.05) for n in (20, 40, 150, 450, 2000)]
    assert margins == sorted(margins, reverse=True) and margins[-1] == 0.05 and margins[0] > 0.2


def test_decision_serialises_and_renders_one_table_row_per_check():
    cand, champ = exam({"a": (0.9, 450)}, {"a": 80}, (0.9, 100))
    decision = decide(cand, champ, CFG)
    json.dumps(decision.to_dict(), allow_nan=False)
    table = decision.markdown().splitlines()
    assert len(table) == 2 + len(decision.checks)
    assert "lower bound" in table[0] and "flips" in table[0] and "FAIL" in decision.markdown()
