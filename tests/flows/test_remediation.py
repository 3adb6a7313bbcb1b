"""Remediation and pending batches through the real flow (temporary Prefect server, tiny
model): a candidate that forgets is rejected and a stronger attempt is promoted; one that
cannot be fixed leaves its batch pending, and the next delivery carries it in; a run
killed between attempts reuses the finished ones."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.retrain import retrain
from tasks.drift.policy import load_pending, pending_report
from tasks.registry.store import Registry

# no replay at first: the tiny model forgets slice A completely while learning B
FORGETS = {"replay.ratio": 0.0, "retrain.when": "always"}
LADDER_THAT_HELPS = "remediation: {max_attempts: 2, ladder: [{replay.ratio: 1.0}]}\n"
LADDER_THAT_DOES_NOT = "remediation: {max_attempts: 2, ladder: [{train.epochs: 10}]}\n"


def _workspace(root, remediation: str):
    from conftest import TINY_PARAMS

    ws = root / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_text(TINY_PARAMS + remediation)
    return ws


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    from conftest import toy_frame

    root = tmp_path_factory.mktemp("batches")
    paths = {}
    for name, labels, seed in (("a", ["weather", "music"], 1), ("b", ["food", "travel"], 2),
                               ("c", ["health", "car"], 3)):
        paths[name] = root / f"{name}.csv"
        toy_frame(labels, per_label=30, seed=seed, slice_name=name.upper()).to_csv(paths[name], index=False)
    return paths


def test_a_forgetting_candidate_is_rejected_then_promoted_by_a_stronger_attempt(
        tmp_path, batches, prefect_server, one_torch_thread):
    ws = _workspace(tmp_path, LADDER_THAT_HELPS)
    assert retrain(batch=str(batches["a"]), workspace=str(ws))["status"] == "promoted"
    outcome = retrain(batch=str(batches["b"]), workspace=str(ws), overrides=FORGETS)
    attempts = outcome["details"]["attempts"]
    assert [a["promote"] for a in attempts] == [False, True], [a["reasons"] for a in attempts]
    assert any("slice:A" in r or "floor:A" in r for r in attempts[0]["reasons"])
    assert attempts[1]["overrides"] == {"replay.ratio": 1.0} and attempts[1]["seconds"] > 0
    assert outcome["status"] == "promoted" and outcome["exit_code"] == 0
    assert outcome["reasons"][0] == "promoted at attempt 2 of 2"
    decision = json.loads((ws / "reports" / outcome["run_id"] / "decision.json").read_text())
    assert len(decision["details"]["attempts"]) == 2 and "| attempt" not in decision["details"]["gate_table"]
    # the promoted version keeps its exam answers for the next gate's floor (sealed in its manifest)
    reg = Registry(ws / "models")
    assert "exam_answers.parquet" in reg.metadata("v0002")["files"] and reg.verify("v0002") == []
    from tasks.core.workspace import Workspace

    scratch = Workspace.at(ws).scratch_dir  # every attempt's candidate is cleaned up once the run settles
    assert not [p for p in scratch.glob("*") if not p.name.endswith(".run")] if scratch.exists() else True


def test_an_unfixable_candidate_leaves_the_batch_pending_and_the_next_delivery_carries_it_in(
        tmp_path, batches, prefect_server, one_torch_thread):
    ws = _workspace(tmp_path, LADDER_THAT_DOES_NOT)
    assert retrain(batch=str(batches["a"]), workspace=str(ws))["status"] == "promoted"
    rejected = retrain(batch=str(batches["b"]), workspace=str(ws), overrides=FORGETS)
    assert rejected["status"] == "rejected" and rejected["exit_code"] == 3, rejected["reasons"]
    assert len(rejected["details"]["attempts"]) == 2
    assert rejected["production"] == "v0001" and Registry(ws / "models").resolve("production") == "v0001"
    pending = pending_report(ws / "data")
    assert [p["batch_id"] for p in pending] == [rejected["batch_id"]]
    assert pending[0]["attempts"] == 2 and "rejected by the gate" in pending[0]["why"] and pending[0]["since"]
    status = json.loads(CliRunner().invoke(app, ["status", "--workspace", str(ws), "--json"]).stdout)
    assert status["pending"][0]["batch_id"] == rejected["batch_id"]
    # the same bytes again are recognised, not trained on twice: the batch is already pending
    again = retrain(batch=str(batches["b"]), workspace=str(ws))
    assert again["status"] == "skipped" and "already pending" in again["reasons"][0]

    carried = retrain(batch=str(batches["c"]), workspace=str(ws))  # default params: replay on
    assert carried["status"] == "promoted", carried["reasons"]
    meta = Registry(ws / "models").metadata(carried["version"])
    assert rejected["batch_id"] in meta["batch_ids"] and carried["batch_id"] in meta["batch_ids"]
    assert set(meta["metrics"]["slices"]) == {"A", "B", "C"}
    # the pending batch's held-out rows were judged as new rows, not as old knowledge
    new_check = next(c for c in carried["details"]["gate"]["checks"] if c["kind"] == "new_batch")
    assert new_check["rows"] == 36
    assert load_pending(ws / "data") == []


def test_pending_drop_removes_a_batch_on_purpose_and_records_why(tmp_path):
    from tasks.drift.policy import add_pending, pending_history

    data = tmp_path / "data"
    add_pending(data, "b-1", why="rejected by the gate after 3 attempt(s): …", attempts=3)
    runner = CliRunner()
    missing = runner.invoke(app, ["pending", "drop", "b-2", "--reason", "x", "--workspace", str(tmp_path)])
    assert missing.exit_code == 2 and "not pending" in missing.stdout
    dropped = runner.invoke(app, ["pending", "drop", "b-1", "--reason", "mislabelled export",
                                  "--workspace", str(tmp_path)])
    assert dropped.exit_code == 0, dropped.stdout
    assert load_pending(data) == []
    last = pending_history(data)[-1]
    assert last["action"] == "dropped" and last["reason"] == "mislabelled export" and last["was"]["attempts"] == 3
    listed = json.loads(runner.invoke(app, ["pending", "list", "--workspace", str(tmp_path), "--json"]).stdout)
    assert listed["pending"] == [] and listed["history"][-1]["batch_id"] == "b-1"


def test_a_kill_between_attempts_resumes_without_retraining_finished_attempts(
        tmp_path, batches, prefect_server, one_torch_thread, monkeypatch):
    import flows.attempts as attempts
    import tasks.train.finetune as finetune

    ws = _workspace(tmp_path, LADDER_THAT_HELPS)
    assert retrain(batch=str(batches["a"]), workspace=str(ws))["status"] == "promoted"
    real_attempt, calls = attempts._attempt, []

    def killed_at_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed between attempts")
        return real_attempt(*args, **kwargs)

    monkeypatch.setattr(attempts, "_attempt", killed_at_the_second)
    with pytest.raises(BaseException):
        retrain(batch=str(batches["b"]), workspace=str(ws), overrides=FORGETS)
    monkeypatch.setattr(attempts, "_attempt", real_attempt)

    trained = []
    real_finetune = finetune.finetune
    monkeypatch.setattr(finetune, "finetune", lambda *a, **k: trained.append(1) or real_finetune(*a, **k))
    outcome = retrain(batch=str(batches["b"]), workspace=str(ws), overrides=FORGETS)
    assert outcome["status"] == "promoted" and len(outcome["details"]["attempts"]) == 2
    assert trained == [1]  # attempt 1 was reused from its finished candidate; only attempt 2 trained


def test_a_run_killed_between_the_promotion_and_clearing_pending_leaves_nothing_pending(
        tmp_path, batches, prefect_server, one_torch_thread, monkeypatch):
    """Found by the soak drill: the rerun of such a run is skipped ("already in production")
    and must still clear the batches that version learned, and its leftover candidates."""
    import flows.retrain as flow
    from tasks.core.workspace import Workspace

    ws = _workspace(tmp_path, "remediation: {max_attempts: 1}\n")
    assert retrain(batch=str(batches["a"]), workspace=str(ws))["status"] == "promoted"
    rejected = retrain(batch=str(batches["b"]), workspace=str(ws), overrides=FORGETS)
    assert rejected["status"] == "rejected" and load_pending(ws / "data") == [rejected["batch_id"]]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed after the production move")

    monkeypatch.setattr(flow, "clear_pending", killed)
    with pytest.raises(BaseException):
        retrain(batch=str(batches["c"]), workspace=str(ws))
    monkeypatch.undo()
    production = Registry(ws / "models").resolve("production")
    assert rejected["batch_id"] in Registry(ws / "models").metadata(production)["batch_ids"]
    assert load_pending(ws / "data") == [rejected["batch_id"]]  # what the kill left behind

    rerun = retrain(batch=str(batches["c"]), workspace=str(ws))
    assert rerun["status"] == "skipped" and "already in production" in rerun["reasons"][0]
    assert load_pending(ws / "data") == []
    assert not list(Workspace.at(ws).scratch_dir.glob(f"{rerun['batch_id']}-*"))
