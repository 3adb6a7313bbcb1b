"""Retrain policy: every `retrain.when` value, --force, the first batch, min_rows,
min_interval_hours; pending batches are kept in order and cleared once trained."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest

from tasks.core.config import ConfigError, RetrainConfig, load_params
from tasks.drift.policy import add_pending, clear_pending, decide, load_pending

CALM = SimpleNamespace(drifted=False, quality_dropped=False, signals=[])
DRIFT = SimpleNamespace(drifted=True, quality_dropped=False, signals=["new_labels", "embedding[all]"])
WORSE = SimpleNamespace(drifted=False, quality_dropped=True, signals=["quality"])

EXPECTED = {  # when -> retrain? for (calm, drift, quality drop)
    "always": (True, True, True),
    "drift": (False, True, False),
    "quality_drop": (False, False, True),
    "drift_or_quality": (False, True, True),
}


@pytest.mark.parametrize("when", sorted(EXPECTED))
def test_each_when_value(when):
    cfg = RetrainConfig(when=when)
    got = tuple(decide(d, cfg, has_champion=True).retrain for d in (CALM, DRIFT, WORSE))
    assert got == EXPECTED[when]
    skipped = decide(CALM, cfg, has_champion=True)
    if not skipped.retrain:
        assert when in skipped.reason and "stays accepted" in skipped.reason
    assert decide(CALM, cfg, has_champion=True, force=True).retrain
    assert decide(CALM, cfg, has_champion=False).retrain  # nothing to serve yet


def test_min_rows_waits_for_enough_rows():
    cfg = RetrainConfig(when="always", min_rows=100)
    assert not decide(DRIFT, cfg, has_champion=True, waiting_rows=60).retrain
    assert decide(DRIFT, cfg, has_champion=True, waiting_rows=100).retrain
    assert "min_rows" in decide(DRIFT, cfg, has_champion=True, waiting_rows=60).reason


def test_min_interval_holds_drift_but_not_a_quality_drop():
    cfg = RetrainConfig(when="drift_or_quality", min_interval_hours=24)
    now = dt.datetime(2026, 11, 29, 12, tzinfo=dt.timezone.utc)
    young, old = "2026-11-29T06:00:00+00:00", "2026-11-27T06:00:00+00:00"
    assert not decide(DRIFT, cfg, has_champion=True, champion_created_at=young, now=now).retrain
    assert decide(WORSE, cfg, has_champion=True, champion_created_at=young, now=now).retrain
    assert decide(DRIFT, cfg, has_champion=True, champion_created_at=old, now=now).retrain


def test_retrain_section_is_validated(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("retrain: {when: sometimes}\n")
    with pytest.raises(ConfigError, match="retrain.when"):
        load_params(params)
    params.write_text("retrain: {when: drift, min_rows: 50}\ndrift: {embedding_method: model}\n")
    assert load_params(params).retrain == RetrainConfig(when="drift", min_rows=50)
    with pytest.raises(ConfigError, match="drift.embedding_method"):
        load_params(params, {"drift.embedding_method": "tsne"})


def test_pending_keeps_order_and_clears_trained(tmp_path):
    assert load_pending(tmp_path) == []
    assert clear_pending(tmp_path, ["b-1"]) == [] and not (tmp_path / "pending.json").exists()
    add_pending(tmp_path, "b-1")
    add_pending(tmp_path, "b-2")
    assert add_pending(tmp_path, "b-1") == ["b-1", "b-2"]  # never twice
    assert clear_pending(tmp_path, ["b-0", "b-1"]) == ["b-2"]
    assert load_pending(tmp_path) == ["b-2"]
