"""The retrain policy through the real flow (temporary Prefect server, tiny model):
each `retrain.when` value gives the right exit code, a skipped batch stays accepted and
joins the next retrain, and `ratchet drift --json` reports without training."""

from __future__ import annotations

import json
import shutil

import pytest

from flows.retrain import retrain
from tasks.registry.store import Registry


@pytest.fixture(scope="module")
def champion_ws(tmp_path_factory, prefect_server, one_torch_thread):
    """A workspace whose production model learned weather/music (slice A), plus batches:
    `calm` (same labels and distribution), `shuffled` (same texts, labels permuted) and
    `new` (two new labels)."""
    from conftest import flow_workspace, toy_frame

    root, ws = flow_workspace(tmp_path_factory, "policy")
    first = root / "first.csv"
    toy_frame(["weather", "music"], per_label=30, seed=1, slice_name="A").to_csv(first, index=False)
    outcome = retrain(batch=str(first), workspace=str(ws))
    assert outcome["status"] == "promoted", outcome["reasons"]
    calm = toy_frame(["weather", "music"], per_label=30, seed=3, slice_name="A")
    shuffled = calm.assign(label=calm["label"].sample(frac=1.0, random_state=0).to_numpy())
    batches = {"calm": calm, "shuffled": shuffled,
               "new": toy_frame(["food", "travel"], per_label=30, seed=2, slice_name="B")}
    paths = {}
    for name, frame in batches.items():
        paths[name] = root / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    return ws, paths


def _copy(ws, tmp_path):
    work = tmp_path / "ws"
    shutil.copytree(ws, work, symlinks=True)
    return work


@pytest.mark.parametrize("when,batch,skipped", [
    ("drift", "calm", True), ("quality_drop", "calm", True), ("drift_or_quality", "calm", True),
    ("always", "calm", False), ("quality_drop", "shuffled", False), ("drift", "new", False),
])
def test_policy_decides_the_exit_code(champion_ws, tmp_path, when, batch, skipped):
    ws, paths = champion_ws
    work = _copy(ws, tmp_path)
    outcome = retrain(batch=str(paths[batch]), workspace=str(work), overrides={"retrain.when": when})
    details = outcome["details"]
    assert details["policy"]["retrain"] is not skipped, (details["policy"], details["drift"])
    if skipped:
        assert outcome["status"] == "skipped" and outcome["exit_code"] == 5
        assert when in outcome["reasons"][0]
        assert json.loads((work / "data" / "pending.json").read_text())["batch_ids"] == [outcome["batch_id"]]
        assert Registry(work / "models").resolve("production") == "v0001"
    else:
        assert outcome["exit_code"] in (0, 3), outcome["reasons"]
    decision = json.loads((work / "reports" / outcome["run_id"] / "decision.json").read_text())
    assert decision["details"]["drift"]["drifted"] == details["drift"]["drifted"]
    if batch == "shuffled":
        assert "quality" in details["drift"]["signals"] and details["drift"]["quality_dropped"]
    if batch == "new":
        assert "new_labels" in details["drift"]["signals"]


def test_skipped_batch_joins_the_next_retrain(champion_ws, tmp_path):
    ws, paths = champion_ws
    work = _copy(ws, tmp_path)
    held = retrain(batch=str(paths["calm"]), workspace=str(work), overrides={"retrain.when": "drift"})
    assert held["exit_code"] == 5
    again = retrain(batch=str(paths["new"]), workspace=str(work), overrides={"retrain.when": "drift"})
    assert again["status"] == "promoted", again["reasons"]
    meta = Registry(work / "models").metadata(again["version"])
    assert held["batch_id"] in meta["batch_ids"] and meta["batch_ids"][-1] == again["batch_id"]
    assert json.loads((work / "data" / "pending.json").read_text())["batch_ids"] == []
    assert "A" in again["details"]["candidate_scores"]["slices"]


def test_drift_command_json(champion_ws):
    from typer.testing import CliRunner

    from flows.cli import app

    ws, paths = champion_ws
    before = sorted(p.name for p in (ws / "data" / "batches").iterdir())
    done = CliRunner().invoke(app, ["drift", str(paths["new"]), "--workspace", str(ws), "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)  # stderr carries transformers progress bars
    assert report["drifted"] is True and "new_labels" in report["signals"]
    assert report["validation"]["passed"] and report["quality"]["rows_scored"] == 0
    assert sorted(p.name for p in (ws / "data" / "batches").iterdir()) == before  # nothing stored
    bad = CliRunner().invoke(app, ["drift", str(ws / "params.yaml"), "--workspace", str(ws)])
    assert bad.exit_code == 4
