"""Accuracy matrix: BWT and forgetting by hand (Lopez-Paz & Ranzato; Chaudhry et al.),
unknown cells, and the record that grows one row per promotion."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.registry.matrix import (as_array, average_forgetting, bwt, column_forgetting, extend, forgetting, square,
                          stamp, summary)

# row i = after training on batch i, column j = batch j; None above the diagonal = never seen
R = [[0.9, None, None],
     [0.8, 0.95, None],
     [0.7, 0.9, 0.85]]


def test_bwt_by_hand():
    # (0.7 - 0.9 + 0.9 - 0.95) / 2
    assert bwt(R) == pytest.approx(-0.125)
    assert bwt([[0.9]]) is None and bwt([]) is None
    assert bwt([[0.5, 0.0], [0.75, 1.0]]) == 0.25  # positive: later learning helped batch 0


def test_forgetting_by_hand():
    # batch 0: best earlier 0.9, now 0.7; batch 1: best earlier 0.95, now 0.9
    assert forgetting(R) == [0.2, 0.05]
    assert average_forgetting(R) == pytest.approx(0.125)
    assert forgetting([[0.9]]) == [] and average_forgetting([[0.9]]) is None


def test_numpy_and_lists_agree_and_nan_is_unknown():
    arr = as_array(R)
    assert np.isnan(arr[0, 1]) and arr.shape == (3, 3)
    assert bwt(arr) == bwt(R) and forgetting(arr) == forgetting(R)
    assert as_array([[1.0], [0.5, 0.25]]).shape == (2, 2)  # ragged rows padded


def test_super_diagonal_does_not_change_the_definitions():
    """The champion's pre-learning score R[i-1][i] sits above the diagonal; it may only
    raise the 'best earlier' score when it is higher than what was reached after learning."""
    filled = [[0.9, 0.1, None], [0.8, 0.95, 0.0], [0.7, 0.9, 0.85]]
    assert bwt(filled) == bwt(R) and forgetting(filled) == forgetting(R)


def test_invariants_on_random_matrices():
    """Forgetting is never below -(last - best) and is zero when the last row is the best;
    BWT equals minus the mean forgetting when each batch peaked right after it was learned."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        t = int(rng.integers(2, 8))
        m = np.tril(rng.uniform(0, 1, (t, t))) + np.triu(np.full((t, t), np.nan), 1)
        diag_is_best = m.copy()
        for j in range(t):
            diag_is_best[j + 1:, j] = np.minimum(diag_is_best[j + 1:, j], diag_is_best[j, j])
        assert bwt(diag_is_best) == pytest.approx(-average_forgetting(diag_is_best), abs=2e-4)
        assert all(f >= 0 for f in forgetting(diag_is_best))
        best_last = m.copy()
        best_last[-1] = 1.0
        assert all(f <= 0 for f in forgetting(best_last))


def test_column_forgetting_any_rectangle():
    slices = [[0.9, None], [0.85, 0.8], [0.95, 0.6]]
    assert column_forgetting(slices) == [-0.05, 0.2]
    assert column_forgetting([[0.9, 0.8]]) == [None, None]
    assert column_forgetting([[0.9, None], [None, 0.8]]) == [None, None]


def sheet(batches: dict, slices: dict) -> dict:
    return {"batches": {b: {"accuracy": a} for b, a in batches.items()},
            "slices": {s: {"accuracy": a} for s, a in slices.items()}}


def grow() -> dict:
    """Three promotions as the flow records them."""
    rec = extend(None, parent_version=None, batch_id="b1", batch_ids=["b1"],
                 candidate=sheet({"b1": 0.9}, {"A": 0.9}), champion=sheet({"b1": 0.0}, {"A": 0.0}))
    rec = stamp(rec, "v0001")
    rec = extend(rec, parent_version="v0001", batch_id="b2", batch_ids=["b1", "b2"],
                 candidate=sheet({"b1": 0.8, "b2": 0.95}, {"A": 0.8, "B": 0.95}),
                 champion=sheet({"b1": 0.9, "b2": 0.1}, {"A": 0.9, "B": 0.1}))
    rec = stamp(rec, "v0002")
    return extend(rec, parent_version="v0002", batch_id="b3", batch_ids=["b1", "b2", "b3"],
                  candidate=sheet({"b1": 0.7, "b2": 0.9, "b3": 0.85}, {"A": 0.7, "B": 0.9}),
                  champion=sheet({"b1": 0.8, "b2": 0.95, "b3": 0.0}, {"A": 0.8, "B": 0.95}))


def test_extend_grows_one_row_per_promotion():
    rec = grow()
    assert rec["batches"] == ["b1", "b2", "b3"]
    assert [r["version"] for r in rec["rows"]] == ["v0001", "v0002", None]
    assert rec["accuracy"] == [[0.9, 0.1, None], [0.8, 0.95, 0.0], [0.7, 0.9, 0.85]]
    assert rec["slices"] == ["A", "B"] and rec["slice_accuracy"] == [[0.9, None], [0.8, 0.95], [0.7, 0.9]]
    assert stamp(rec, "v0003")["rows"][-1] == {"version": "v0003", "batch_id": "b3"}
    got = summary(stamp(rec, "v0003"))
    assert got["bwt"] == pytest.approx(-0.125) and got["average_forgetting"] == pytest.approx(0.125)
    assert got["forgetting"] == {"b1": 0.2, "b2": 0.05}
    assert got["slice_forgetting"] == {"A": 0.2, "B": 0.05}


def test_first_version_without_a_parent_or_champion():
    rec = extend(None, parent_version=None, batch_id="b1", batch_ids=["b1"], candidate=sheet({"b1": 0.5}, {}))
    assert rec["accuracy"] == [[0.5]] and rec["rows"] == [{"version": None, "batch_id": "b1"}]
    assert summary(rec) == {"bwt": None, "average_forgetting": None, "forgetting": {}, "slice_forgetting": {}}
    assert summary(None) is None and summary({"rows": []}) is None


def test_parent_row_named_even_if_never_stamped():
    rec = extend(None, parent_version=None, batch_id="b1", batch_ids=["b1"], candidate=sheet({"b1": 0.5}, {}))
    rec = extend(rec, parent_version="v0007", batch_id="b2", batch_ids=["b1", "b2"],
                 candidate=sheet({"b1": 0.5, "b2": 0.5}, {}))
    assert rec["rows"][0]["version"] == "v0007"
    assert rec["accuracy"][0] == [0.5, None]  # no champion sheet: the cell stays unknown


def test_a_batch_learned_again_moves_to_the_last_column():
    """--force on b1 after b2: columns follow the new lineage order, the square view keeps
    each batch's latest learner, chronologically."""
    rec = grow()
    rec = stamp(rec, "v0003")
    rec = extend(rec, parent_version="v0003", batch_id="b1", batch_ids=["b2", "b3", "b1"],
                 candidate=sheet({"b1": 0.95, "b2": 0.9, "b3": 0.8}, {"A": 0.95, "B": 0.9}),
                 champion=sheet({"b1": 0.7, "b2": 0.9, "b3": 0.85}, {}))
    assert rec["batches"] == ["b2", "b3", "b1"]
    assert rec["accuracy"][0] == [0.1, None, 0.9]          # v0001's row, columns reordered
    assert rec["accuracy"][2] == [0.9, 0.85, 0.7]          # v0003 got the champion cell for b1
    assert square(rec) == [[0.95, 0.0, 0.8], [0.9, 0.85, 0.7], [0.9, 0.8, 0.95]]
    got = summary(rec)
    assert set(got["forgetting"]) == {"b2", "b3"} and got["forgetting"]["b3"] == 0.05
