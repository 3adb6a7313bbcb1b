"""Gate: paired, Holm-corrected non-inferiority per old slice; the new batch must be learned."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.config import GateConfig
from tasks.gate import POOLED, GateDecision, decide, paired_test

CFG = GateConfig(tolerance=0.05, alpha=0.05, min_slice_size=30, n_resamples=1000, min_new_slice_score=0.5)


def outcomes(acc: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """n rows of 0/1 with exactly round(acc * n) ones, in random order."""
    row = np.zeros(n, dtype=int)
    row[: int(round(acc * n))] = 1
    return rng.permutation(row)


def exam(champion: dict[str, tuple[float, int]], flips: dict[str, int], new: tuple[float, int], seed=0):
    """Evaluate-shaped results for champion and candidate on the same exam.

    champion: slice -> (champion accuracy, rows); flips: slice -> net rows the candidate
    gets wrong that the champion got right (negative = improves); new: (candidate
    accuracy, rows) on the new batch."""
    rng = np.random.default_rng(seed)
    slices, champ, cand = [], [], []
    for name, (acc, n) in champion.items():
        h = outcomes(acc, n, rng)
        c = h.copy()
        k = flips.get(name, 0)
        idx = np.flatnonzero(h == (1 if k > 0 else 0))[: abs(k)]
        c[idx] = 0 if k > 0 else 1
        slices += [name] * n
        champ += h.tolist()
        cand += c.tolist()
    new_acc, new_n = new
    new_rows = outcomes(new_acc, new_n, rng).tolist()
    is_new = [False] * len(slices) + [True] * new_n
    rows = lambda correct: {"slice": slices + ["new"] * new_n, "is_new": is_new, "correct": correct}  # noqa: E731
    return {"rows": rows(cand + new_rows)}, {"rows": rows(champ + [0] * new_n)}


def by_name(decision: GateDecision) -> dict:
    return {c.name: c for c in decision.checks}


CASES = [
    # id, champion slices, candidate flips, new batch, promote, failing check names
    ("identical-models", {"a": (0.9, 450), "b": (0.9, 450)}, {}, (0.9, 450), True, []),
    ("noise-within-tolerance", {"a": (0.95, 450), "b": (0.95, 450)}, {"a": 5, "b": -3}, (0.9, 450), True, []),
    ("clear-drop-on-one-slice", {"a": (0.95, 450), "b": (0.95, 450)}, {"b": 60}, (0.9, 450), False,
     ["slice:b", "old exam overall"]),
    ("drop-on-one-slice-hidden-in-the-average", {"a": (0.9, 450), "b": (0.9, 450), "c": (0.9, 450)},
     {"b": 45, "a": -20, "c": -20}, (0.9, 450), False, ["slice:b"]),
    ("improvement-everywhere", {"a": (0.8, 450)}, {"a": -30}, (0.9, 450), True, []),
    ("new-batch-not-learned", {"a": (0.9, 450)}, {}, (0.2, 450), False, ["new batch held-out"]),
    # 40 rows cannot show that one lost row is within 0.05: non-inferiority is not proven
    ("small-slice-cannot-prove-safety", {"a": (0.9, 40)}, {"a": 1}, (0.9, 100), False,
     ["slice:a", "old exam overall"]),
]


@pytest.mark.parametrize("champion,flips,new,promote,failing", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide_table(champion, flips, new, promote, failing):
    cand, champ = exam(champion, flips, new)
    decision = decide(cand, champ, CFG, seed=3)
    assert decision.promote is promote, decision.markdown()
    assert sorted(c.name for c in decision.checks if not c.passed) == sorted(failing)
    for name in failing:
        assert any(name in reason for reason in decision.reasons)
    if promote:
        assert decision.reasons[0].startswith("all ")


def test_every_old_slice_and_the_overall_exam_get_a_row_with_bounds():
    cand, champ = exam({"a": (0.9, 450), "b": (0.8, 300)}, {"a": 2}, (0.9, 100))
    checks = by_name(decide(cand, champ, CFG))
    assert set(checks) == {"slice:a", "slice:b", "old exam overall", "new batch held-out"}
    a = checks["slice:a"]
    assert a.rows == 450 and a.champion == 0.9 and a.candidate == pytest.approx(0.9 - 2 / 450, abs=1e-4)
    assert a.lower_bound is not None and a.lower_bound <= a.candidate - a.champion
    assert checks["old exam overall"].rows == 750
    assert checks["new batch held-out"].lower_bound is None


def test_tiny_slices_are_pooled_and_a_tiny_pool_is_unjudgeable_not_silently_passed():
    cand, champ = exam({"a": (0.9, 450), "t1": (0.9, 20), "t2": (0.9, 20)}, {}, (0.9, 100))
    pooled = by_name(decide(cand, champ, CFG))[f"slice:{POOLED}"]
    assert pooled.rows == 40 and pooled.verdict == "pass"

    cand, champ = exam({"a": (0.9, 450), "t1": (0.9, 10)}, {"t1": 5}, (0.9, 100))
    decision = decide(cand, champ, CFG)
    pooled = by_name(decision)[f"slice:{POOLED}"]
    assert pooled.verdict == "unjudgeable" and pooled.rows == 10
    assert any("not judged" in r for r in decision.reasons)


def test_first_batch_judges_only_the_new_batch():
    cand, _ = exam({}, {}, (0.8, 100))
    decision = decide(cand, None, CFG)
    assert [c.kind for c in decision.checks] == ["new_batch"] and decision.promote


def test_a_batch_without_held_out_rows_is_rejected_with_a_reason_that_says_so():
    cand, champ = exam({"a": (0.9, 450)}, {}, (0.0, 0))
    decision = decide(cand, champ, CFG)
    assert not decision.promote
    assert any("no held-out rows" in r for r in decision.reasons)


def test_holm_makes_many_borderline_slices_harder_to_pass_than_one():
    one = decide(*exam({"a": (0.95, 200)}, {"a": 4}, (0.9, 100)), CFG)
    many = decide(*exam({f"s{i}": (0.95, 200) for i in range(8)}, {f"s{i}": 4 for i in range(8)}, (0.9, 100)), CFG)
    p_one = by_name(one)["slice:a"].p_value
    p_many = max(c.p_value for c in many.checks if c.kind == "old_slice")
    assert p_many >= p_one


def test_paired_test_bound_tracks_the_difference_and_is_seeded():
    rng = np.random.default_rng(0)
    champ = outcomes(0.9, 400, rng)
    cand = champ.copy()
    cand[np.flatnonzero(champ == 1)[:20]] = 0  # a 0.05 drop
    lb1, p1 = paired_test(cand, champ, tolerance=0.02, alpha=0.05, n_resamples=1000, seed=1)
    lb2, p2 = paired_test(cand, champ, tolerance=0.02, alpha=0.05, n_resamples=1000, seed=1)
    assert (lb1, p1) == (lb2, p2)
    assert lb1 < -0.05 < lb1 + 0.05 and p1 > 0.5
    assert paired_test(champ, champ, tolerance=0.02, alpha=0.05, n_resamples=100, seed=0) == (0.0, 0.0)


def test_decision_serialises_and_renders_one_table_row_per_check():
    cand, champ = exam({"a": (0.9, 450)}, {"a": 80}, (0.9, 100))
    decision = decide(cand, champ, CFG)
    json.dumps(decision.to_dict(), allow_nan=False)
    table = decision.markdown().splitlines()
    assert len(table) == 2 + len(decision.checks)
    assert "lower bound" in table[0] and "FAIL" in decision.markdown()
