"""Deployments and the landing-zone sweep on the session's Prefect server (tiny model)."""

from __future__ import annotations

import json
import os
import threading

import pytest

from flows.deploy import NIGHTLY, RETRAIN, WATCH, deployments, sweep_landing
from tasks.intake.landing import ledger_path
from flows.lock import LockTimeout, file_lock, promotion_lock
from tasks.registry.store import Registry
from tasks.core.workspace import Workspace


def _land(workspace, name, labels, seed, mtime):
    from conftest import toy_frame

    path = workspace / "data" / "landing" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    toy_frame(labels, per_label=30, seed=seed, slice_name=name.split(".")[0]).to_csv(path, index=False)
    os.utime(path, (mtime, mtime))
    return path


def test_deployments_take_schedule_and_workspace_from_params(workspace):
    (workspace / "params.yaml").write_text(
        (workspace / "params.yaml").read_text()
        + "ops: {schedule_cron: '30 3 * * 1-5', timezone: Europe/Berlin, watch_interval_seconds: 0}\n")
    built = {d.name: d for d in deployments(workspace)}
    assert set(built) == {RETRAIN, NIGHTLY}  # no watcher when its interval is 0
    (schedule,) = built[NIGHTLY].schedules
    assert schedule.schedule.cron == "30 3 * * 1-5" and schedule.schedule.timezone == "Europe/Berlin"
    assert built[RETRAIN].entrypoint == "flows.retrain.retrain"
    assert all(d.parameters["workspace"] == str(workspace.resolve()) for d in built.values())
    assert built[NIGHTLY].concurrency_limit == 1
    assert WATCH in {d.name for d in deployments(workspace.parent / "elsewhere")}  # defaults: watcher on


def test_sweep_retrains_each_landed_batch_once_in_arrival_order(workspace, prefect_server, one_torch_thread):
    second = _land(workspace, "a_second.csv", ["food", "travel"], seed=2, mtime=2_000_000_000)
    first = _land(workspace, "z_first.csv", ["weather", "music"], seed=1, mtime=1_900_000_000)
    again = workspace / "data" / "landing" / "again.csv"
    again.write_bytes(first.read_bytes())  # same bytes, landed later under another name: the same batch
    os.utime(again, (1_950_000_000, 1_950_000_000))
    handled = sweep_landing(workspace=str(workspace))
    assert [(h["path"], h["status"]) for h in handled] == [(str(first), "promoted"), (str(second), "promoted")]
    reg = Registry(workspace / "models")
    assert reg.resolve("production") == "v0002"
    assert reg.metadata("v0002")["batch_ids"] == [h["batch_id"] for h in handled]
    # a restarted watcher knows only what is on disk: nothing is triggered twice
    on_disk = json.loads(ledger_path(Workspace.at(workspace)).read_text())["batches"]
    assert {b["status"] for b in on_disk.values()} == {"promoted"} and len(on_disk) == 2
    assert sweep_landing(workspace=str(workspace)) == []


@pytest.mark.reliability
def test_file_lock_times_out_with_a_clear_message(tmp_path):
    with file_lock(tmp_path / ".promote.lock", None):
        with pytest.raises(LockTimeout, match="still held"):
            with file_lock(tmp_path / ".promote.lock", 0.2):
                pass


@pytest.mark.reliability
def test_promotion_lock_is_one_slot_across_runs(tmp_path, prefect_server):
    name = f"test-promote-{tmp_path.name}"[:60]
    held, release = threading.Event(), threading.Event()

    def holder():
        with promotion_lock(tmp_path / "models", name, 60):
            held.set()
            release.wait(60)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(60)
        with pytest.raises(LockTimeout, match=name):
            with promotion_lock(tmp_path / "models", name, 1):
                pass
    finally:
        release.set()
        thread.join(60)
    with promotion_lock(tmp_path / "models", name, 30):  # free again once released
        pass


def test_fan_out_starts_one_deployment_run_per_batch_exactly_once(workspace, prefect_server):
    from prefect import get_client

    from flows.deploy import _trigger
    from tasks.intake.landing import arrivals

    (workspace / "params.yaml").write_text((workspace / "params.yaml").read_text() + "ops: {watch_interval_seconds: 0}\n")
    name = f"{RETRAIN}-{workspace.parent.name}"[:60]
    (retrain_deployment,) = [d for d in deployments(workspace) if d.name == RETRAIN]
    retrain_deployment.name = name
    retrain_deployment.apply()  # registered, not served: its runs stay scheduled
    _land(workspace, "one.csv", ["weather", "music"], seed=1, mtime=1_900_000_000)
    _land(workspace, "two.csv", ["food", "travel"], seed=2, mtime=2_000_000_000)
    handled = sweep_landing(workspace=str(workspace), fan_out=True, retrain_deployment=name)
    assert [h["status"] for h in handled] == ["triggered", "triggered"]
    with get_client(sync_client=True) as client:
        runs = [client.read_flow_run(h["flow_run_id"]) for h in handled]
    assert [r.parameters["batch"] for r in runs] == [h["path"] for h in handled]
    assert sweep_landing(workspace=str(workspace), fan_out=True, retrain_deployment=name) == []
    # a sweep that died between starting a run and recording it starts no second run
    first = arrivals("data/landing", Workspace.at(workspace))[0]
    assert _trigger(first, Workspace.at(workspace), name) == handled[0]["flow_run_id"]


def test_watch_command_with_nothing_landed(workspace, prefect_server):
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["watch", "--workspace", str(workspace)])
    assert result.exit_code == 0, result.output
    assert "no new batches" in result.output
