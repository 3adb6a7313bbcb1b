"""Gate: promote only when no old slice drops beyond tolerance and the new batch is learned."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.config import GateConfig
from tasks.gate import GateDecision, decide

CFG = GateConfig(tolerance=0.02, min_new_slice_score=0.5)


def sheet(overall: float, **slices: float) -> dict:
    """A score sheet shaped like tasks.evaluate.sheet's."""
    cell = lambda acc: {"rows": 10, "accuracy": acc, "macro_f1": acc}  # noqa: E731
    return {"overall": cell(overall), "slices": {k: cell(v) for k, v in slices.items()}, "batches": {}}


def gate(candidate_old, champion_old, new_acc, cfg=CFG, old_slices=None) -> GateDecision:
    if old_slices is None:
        old_slices = sorted(champion_old["slices"]) if champion_old else []
    return decide(candidate_old=candidate_old, champion_old=champion_old, candidate_new=sheet(new_acc),
                  old_slices=old_slices, cfg=cfg)


# --- first batch ----------------------------------------------------------------------

@pytest.mark.parametrize("new_acc,promote", [(0.0, False), (0.49, False), (0.4999, False), (0.5, True),
                                             (0.73, True), (1.0, True)])
def test_first_batch_promotes_iff_new_batch_learned(new_acc, promote):
    decision = gate(None, None, new_acc)
    assert decision.promote is promote
    assert [c.kind for c in decision.checks] == ["new_batch"]
    check = decision.checks[0]
    assert check.champion is None and check.candidate == new_acc and check.threshold == 0.5
    if promote:
        assert decision.reasons == ["all 1 checks passed"]
    else:
        assert len(decision.reasons) == 1 and "new batch held-out" in decision.reasons[0]


# --- old slices -----------------------------------------------------------------------

def test_old_slice_drop_beyond_tolerance_rejects_and_names_slice():
    champion = sheet(0.90, web=0.90, app=0.90)
    candidate = sheet(0.89, web=0.92, app=0.85)  # app drops 0.05 > 0.02; overall only 0.01
    decision = gate(candidate, champion, 0.9)
    assert decision.promote is False
    assert len(decision.reasons) == 1
    assert "slice:app" in decision.reasons[0]
    assert "0.8500" in decision.reasons[0] and "0.8800" in decision.reasons[0]
    failed = [c.name for c in decision.checks if not c.passed]
    assert failed == ["slice:app"]


def test_old_slice_drop_within_tolerance_passes():
    champion = sheet(0.90, web=0.90, app=0.80)
    candidate = sheet(0.89, web=0.885, app=0.79)
    decision = gate(candidate, champion, 0.6)
    assert decision.promote is True
    assert decision.reasons == ["all 4 checks passed"]
    assert [c.kind for c in decision.checks] == ["old_slice", "old_slice", "old_overall", "new_batch"]


@pytest.mark.parametrize("champ,tol", [(0.8, 0.1), (0.9, 0.02), (0.0204, 0.02), (0.95, 0.02), (0.5, 0.05)])
def test_drop_of_exactly_tolerance_passes(champ, tol):
    """'May not lose more than tolerance': losing exactly that much is allowed, whatever
    the float rounding of champ - tol (0.8 - 0.1 is 0.7000000000000001)."""
    cand = round(champ - tol, 4)
    decision = gate(sheet(cand, s=cand), sheet(champ, s=champ), 1.0, cfg=GateConfig(tolerance=tol))
    assert decision.promote, decision.reasons


def test_exact_tolerance_invariant_on_the_4_decimal_grid():
    """Sheets round accuracies to 4 places: on that grid, a drop of at most tolerance
    passes and a drop one step more fails, for every champion score."""
    rng = np.random.default_rng(0)
    for _ in range(2000):
        tol = round(float(rng.choice([0.0, 0.01, 0.02, 0.05, 0.1])), 4)
        champ = round(float(rng.integers(0, 10001)) / 10000, 4)
        at = round(champ - tol, 4)
        below = round(at - 0.0001, 4)
        cfg = GateConfig(tolerance=tol, min_new_slice_score=0.0)
        if at >= 0:
            assert gate(sheet(at, s=at), sheet(champ, s=champ), 1.0, cfg=cfg).promote, (champ, tol)
        if below >= 0:
            assert not gate(sheet(below, s=below), sheet(champ, s=champ), 1.0, cfg=cfg).promote, (champ, tol)


def test_improvement_always_passes_old_checks():
    rng = np.random.default_rng(1)
    for _ in range(200):
        champ = {f"s{i}": round(float(rng.random()), 4) for i in range(4)}
        cand = {k: round(min(1.0, v + float(rng.random()) * 0.1), 4) for k, v in champ.items()}
        decision = gate(sheet(max(cand.values()), **cand), sheet(min(champ.values()), **champ), 0.5)
        assert decision.promote, decision.reasons


def test_overall_old_exam_check_rejects_alone():
    """Every slice is within tolerance, yet the old exam as a whole fell too far."""
    champion = sheet(0.90, web=0.90, app=0.90)
    candidate = sheet(0.87, web=0.89, app=0.89)
    decision = gate(candidate, champion, 0.9, cfg=GateConfig(tolerance=0.02, min_new_slice_score=0.5))
    assert decision.promote is False
    assert [c.name for c in decision.checks if not c.passed] == ["old exam overall"]
    assert decision.reasons[0].startswith("old exam overall:")


def test_slice_missing_from_candidate_counts_as_zero():
    champion = sheet(0.9, web=0.9, app=0.9)
    candidate = sheet(0.9, web=0.9)
    decision = gate(candidate, champion, 0.9)
    app = next(c for c in decision.checks if c.name == "slice:app")
    assert app.candidate == 0.0 and not app.passed and not decision.promote


def test_only_named_old_slices_are_checked():
    champion = sheet(0.9, web=0.9, app=0.9)
    candidate = sheet(0.9, web=0.9, app=0.1)
    decision = gate(candidate, champion, 0.9, old_slices=["web"])
    assert [c.name for c in decision.checks] == ["slice:web", "old exam overall", "new batch held-out"]
    assert decision.promote


def test_every_failure_is_a_reason():
    champion = sheet(0.9, web=0.9, app=0.9)
    candidate = sheet(0.5, web=0.5, app=0.5)
    decision = gate(candidate, champion, 0.1)
    assert decision.promote is False
    assert len(decision.reasons) == 4
    for reason, name in zip(decision.reasons, ["slice:app", "slice:web", "old exam overall", "new batch held-out"]):
        assert reason.startswith(name)


def test_new_batch_threshold_applies_with_champion_too():
    champion = sheet(0.9, web=0.9)
    decision = gate(sheet(0.95, web=0.95), champion, 0.3)
    assert not decision.promote
    assert [c.name for c in decision.checks if not c.passed] == ["new batch held-out"]


# --- reporting ------------------------------------------------------------------------

def test_markdown_has_one_row_per_check():
    champion = sheet(0.90, web=0.90, app=0.80, mail=0.7)
    candidate = sheet(0.85, web=0.95, app=0.70, mail=0.7)
    decision = gate(candidate, champion, 0.6)
    lines = decision.markdown().splitlines()
    assert lines[0].startswith("| check |") and lines[1].startswith("|---")
    rows = lines[2:]
    assert len(rows) == len(decision.checks) == 5
    for row, check in zip(rows, decision.checks):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 6
        assert cells[0] == check.name
        assert cells[5] == ("pass" if check.passed else "FAIL")
    app = next(r for r in rows if r.startswith("| slice:app "))
    assert "| 0.8000 | 0.7000 | -0.1000 | 0.7800 | FAIL |" in app
    new = rows[-1]
    assert new.startswith("| new batch held-out | - | 0.6000 | - | 0.5000 | pass |")


def test_markdown_first_batch():
    lines = gate(None, None, 0.7).markdown().splitlines()
    assert len(lines) == 3


def test_to_dict_is_json():
    decision = gate(sheet(0.9, web=0.9), sheet(0.9, web=0.9), 0.9)
    blob = json.loads(json.dumps(decision.to_dict()))
    assert blob["promote"] is True
    assert [c["name"] for c in blob["checks"]] == ["slice:web", "old exam overall", "new batch held-out"]
    assert set(blob["checks"][0]) == {"name", "kind", "champion", "candidate", "threshold", "passed"}


def test_a_batch_without_held_out_rows_is_rejected_with_a_reason_that_says_so():
    from tasks.config import GateConfig
    from tasks.gate import decide

    empty = {"overall": {"rows": 0, "accuracy": 0.0, "macro_f1": 0.0}, "slices": {}, "batches": {}}
    decision = decide(candidate_old=None, champion_old=None, candidate_new=empty, old_slices=[], cfg=GateConfig())
    assert not decision.promote
    assert "no held-out rows" in decision.reasons[0]
