"""Events on the session's Prefect server (tiny model): what a promoted run, a quarantined
batch, a duplicate run, the watcher, `ratchet notify-landed` and a rollback emit, read back
from the server's events API; and the retrain deployment's trigger on landed events.
A burst of real landed events through `prefect server start` and `ratchet serve` is
tests/integration/test_event_trigger.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prefect_events import named, ratchet_events, related_ids
from typer.testing import CliRunner

from flows import events
from flows.cli import app
from flows.deploy import NIGHTLY, RETRAIN, deployments, sweep_landing
from flows.lock import batch_claim
from flows.retrain import retrain
from tasks.intake.batch import batch_id_of, is_decided
from tasks.core.workspace import Workspace

runner = CliRunner()
BAD = "text,label\nrain today,weather\n"  # one row: under validate.min_rows, quarantined untrained


@pytest.fixture(scope="module")
def promoted(tmp_path_factory, prefect_server, one_torch_thread):
    """A workspace after one toy batch was promoted, then delivered again (skipped)."""
    from conftest import flow_workspace, toy_frame

    root, ws = flow_workspace(tmp_path_factory, "events")
    batch = root / "a.csv"
    toy_frame(["weather", "music"], per_label=30, seed=1, slice_name="A").to_csv(batch, index=False)
    return ws, batch, retrain(batch=str(batch), workspace=str(ws)), retrain(batch=str(batch), workspace=str(ws))


def test_a_promoted_run_emits_accepted_then_promoted(promoted, prefect_api_url):
    ws, batch, first, again = promoted
    assert first["status"] == "promoted" and again["status"] == "skipped", first["reasons"]
    found = ratchet_events(prefect_api_url, ws, lambda f: named(f, events.PROMOTED), settle=True)
    # the second delivery changed nothing, so it said nothing
    assert [e["event"] for e in found] == [events.ACCEPTED, events.PROMOTED]
    accepted, done = found
    assert done["resource"]["prefect.resource.id"] == events.workspace_resource_id(ws)
    assert done["resource"]["ratchet.workspace.path"] == str(ws.resolve())
    payload = done["payload"]
    assert (payload["batch_id"], payload["version"], payload["production"], payload["previous"], payload["by"]) == (
        first["batch_id"], "v0001", "v0001", None, "retrain")
    assert payload["run_id"] == first["run_id"] and payload["attempts"] == 1
    assert Path(payload["reports"]["decision"]) == ws / "reports" / first["run_id"] / "decision.json"
    assert Path(payload["reports"]["decision"]).is_file() and Path(payload["reports"]["drift_html"]).is_file()
    assert {f"ratchet.batch.{first['batch_id']}", "ratchet.model.v0001"} <= related_ids(done)
    assert any(r.startswith("prefect.flow-run.") for r in related_ids(done))  # the run that decided it
    assert accepted["payload"]["batch_id"] == first["batch_id"] and accepted["payload"]["rows"] == 60
    assert accepted["payload"]["file"] == str(batch)


def test_a_quarantined_batch_emits_quarantined_only(workspace, prefect_server, prefect_api_url, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(BAD)
    outcome = retrain(batch=str(bad), workspace=str(workspace))
    assert outcome["status"] == "quarantined"
    found = ratchet_events(prefect_api_url, workspace, settle=True)
    assert [e["event"] for e in found] == [events.QUARANTINED]
    payload = found[0]["payload"]
    assert payload["batch_id"] == outcome["batch_id"] and payload["version"] is None
    assert payload["quarantine"] == outcome["details"]["quarantine"] and Path(payload["quarantine"]).is_dir()
    assert Path(payload["reports"]["decision"]).is_file() and payload["reports"]["quarantine"] == payload["quarantine"]
    assert payload["reasons"] and f"ratchet.batch.{outcome['batch_id']}" in related_ids(found[0])


def test_a_run_for_a_batch_another_run_holds_does_nothing(workspace, prefect_server, tmp_path):
    from conftest import toy_frame

    batch = tmp_path / "b.csv"
    toy_frame(["food", "travel"], per_label=30, seed=2).to_csv(batch, index=False)
    batch_id = batch_id_of(batch)
    with batch_claim(workspace, batch_id) as mine:
        assert mine
        with batch_claim(workspace, batch_id) as second:
            assert not second  # not waited for
        outcome = retrain(batch=str(batch), workspace=str(workspace))
    assert outcome["status"] == "skipped" and "another run" in outcome["reasons"][0]
    ws = Workspace.at(workspace)
    assert not is_decided(batch_id, ws) and not ws.batch_dir(batch_id).exists()  # untouched: not even read in
    assert (ws.run_dir(outcome["run_id"]) / "decision.json").is_file()
    assert "-busy-" in outcome["run_id"]  # never the report folder of the run it defers to, started the same second
    with batch_claim(workspace, batch_id) as mine:
        assert mine  # released with the run that held it


def test_the_retrain_deployment_carries_the_landed_trigger(workspace):
    built = {d.name: d for d in deployments(workspace)}
    (trigger,) = built[RETRAIN].triggers
    spec = trigger.model_dump(mode="json")
    assert spec["expect"] == [events.LANDED] and spec["posture"] == "Reactive" and spec["threshold"] == 1
    assert spec["match"] == {"prefect.resource.id": events.workspace_resource_id(workspace),
                             events.START_RUN: "true"}
    assert spec["parameters"] == {"batch": "{{ event.payload.file }}"}  # the workspace stays the deployment's
    assert built[RETRAIN].parameters == {"workspace": str(workspace.resolve())}
    assert not built[NIGHTLY].triggers


def test_notify_landed_emits_one_event_that_asks_for_a_run(workspace, prefect_api_url, tmp_path, monkeypatch):
    from conftest import toy_frame

    batch = tmp_path / "c.csv"
    toy_frame(["bank", "sport"], per_label=10, seed=3).to_csv(batch, index=False)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["notify-landed", "c.csv", "--workspace", str(workspace)])
    assert result.exit_code == 0, result.output
    found = ratchet_events(prefect_api_url, workspace, settle=True)
    (landed,) = found
    assert landed["event"] == events.LANDED and landed["resource"][events.START_RUN] == "true"
    assert landed["payload"] == {"file": str(batch.resolve()), "batch_id": batch_id_of(batch),
                                 "origin": "notify-landed"}
    assert landed["id"] in result.output and f"ratchet.batch.{batch_id_of(batch)}" in related_ids(landed)


def test_notify_landed_needs_a_server_and_a_file(tmp_path, repo):
    import os

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PYTHONPATH"] = str(repo)
    (tmp_path / "x.csv").write_text(BAD)
    done = subprocess.run([sys.executable, "-m", "flows.cli", "notify-landed", str(tmp_path / "x.csv")], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "PREFECT_API_URL" in done.stdout
    assert runner.invoke(app, ["notify-landed", str(tmp_path / "nope.csv")]).exit_code == 2


def test_the_watcher_announces_what_it_runs_itself(workspace, prefect_server, prefect_api_url):
    landing = workspace / "data" / "landing"
    landing.mkdir(parents=True)
    (landing / "tiny.csv").write_text(BAD)
    (handled,) = sweep_landing(workspace=str(workspace))
    assert handled["status"] == "quarantined"
    found = ratchet_events(prefect_api_url, workspace, lambda f: len(f) >= 2, settle=True)
    assert [e["event"] for e in found] == [events.LANDED, events.QUARANTINED]
    landed = found[0]
    assert landed["resource"][events.START_RUN] == "false"  # the trigger leaves it to this sweep
    assert landed["payload"] == {"file": str(landing / "tiny.csv"), "batch_id": handled["batch_id"],
                                 "origin": "watch"}


def test_rollback_and_a_manual_promote_emit_their_events(tmp_path, prefect_server, prefect_api_url):
    from test_cli import registry_with

    ws, reg = registry_with(tmp_path, 2)
    assert runner.invoke(app, ["rollback", "--workspace", str(ws), "--reason", "bad answers"]).exit_code == 0
    assert runner.invoke(app, ["models", "promote", "v0002", "--workspace", str(ws)]).exit_code == 0
    found = ratchet_events(prefect_api_url, ws, lambda f: len(f) >= 2, settle=True)
    assert [e["event"] for e in found] == [events.ROLLED_BACK, events.PROMOTED]
    back, again = (e["payload"] for e in found)
    assert (back["version"], back["previous"], back["reason"], back["by"], back["batch_id"]) == (
        "v0001", "v0002", "bad answers", "ratchet rollback", "batch0")
    assert (again["version"], again["previous"], again["by"]) == ("v0002", "v0001", "ratchet models promote")
    assert Path(back["reports"]["history"]).is_file() and "ratchet.model.v0001" in related_ids(found[0])
