"""Overhead benchmark: share arithmetic and the big-batch stage timings on a small batch."""

from __future__ import annotations

import pytest

from benchmarks.overhead import stage_timings, summarize, synthetic_batch


def test_summarize_splits_the_wall_time():
    stages = {"intake": 1.0, "validate": 2.0, "drift": 3.0, "finetune": 80.0, "evaluate": 6.0, "gate": 1.0,
              "promote": 2.0}
    out = summarize(100.0, stages, bare_s=78.0, warmup_s=30.0, rows=1500, status="promoted", samples=12000)
    assert out["overhead_share"] == pytest.approx(0.22)
    assert out["overhead_share_without_evaluation"] == pytest.approx(0.15)
    assert out["stage_share"]["orchestration"] == pytest.approx(0.05)   # 100 - 95 in no task
    assert sum(out["stage_share"].values()) == pytest.approx(1.0)


def test_synthetic_batches_have_distinct_rows():
    frame = synthetic_batch(300)
    assert len(frame) == 300 and frame["text"].is_unique
    assert set(frame.columns) == {"text", "label", "slice"}


@pytest.mark.slow  # Great Expectations and Evidently on a 5,000-row reference: tens of seconds
def test_stage_timings_run_the_real_validation_and_drift(repo, tmp_path):
    [row] = stage_timings([200], repo / "params.yaml", tmp_path)
    assert row["rows"] == 200 and row["validation_passed"] is True
    assert (tmp_path / "drift-200" / "drift.json").exists()
    assert min(row["intake_s"], row["validate_s"], row["drift_s"]) >= 0
