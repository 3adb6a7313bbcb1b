"""The gate's operating-characteristic benchmark runs the shipped gate on simulated
paired outcomes; here with few simulations, to prove the plumbing and the extremes."""

from __future__ import annotations

from benchmarks.gate_oc import markdown, run, simulate, targets
from tasks.core.config import GateConfig

CFG = GateConfig()


def test_large_slices_catch_a_tolerance_drop_and_pass_an_unchanged_candidate():
    assert simulate(CFG, 2000, 1, 0.05, "unchanged", sims=20, seed=0)["promoted"] == 1.0
    caught = simulate(CFG, 2000, 1, 0.05, "step_drop", sims=20, seed=0)
    assert caught["promoted"] == 0.0 and caught["dropped_slice_low_power"] == 0.0


def test_small_slices_are_judged_low_power_instead_of_stalling():
    got = simulate(CFG, 40, 3, 0.05, "unchanged", sims=30, seed=1)
    assert got["promoted"] >= 0.7 and got["dropped_slice_low_power"] == 1.0


def test_cells_targets_and_table():
    cells = run(CFG, sims=10, sizes=[40, 2000], slices=[1, 3], churns=[0.05])
    assert len(cells) == 2 * 2 * 3 and {c["error"] for c in cells} == {"false rejection", "false acceptance"}
    assert all(0 <= c["ci95"][0] <= c["error_rate"] <= c["ci95"][1] <= 1 for c in cells)
    doc = {"cells": cells, "sims_per_cell": 10, "targets": targets(cells)}
    table = markdown(doc)
    assert table.count("\n| 5% |") == 2 and "false rejection" in table
