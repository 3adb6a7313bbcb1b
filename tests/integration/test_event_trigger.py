"""Landed events through a real `prefect server start` and `ratchet serve` (tiny model).

`ratchet serve` registers the retrain deployment with its trigger (an automation on the
server); two `ratchet notify-landed` processes announce the same file at once, as a
relay retrying a storage notification would. The trigger starts a run per event; the
batch is trained and promoted once, the other run is a no-op. The server, the flow runs,
the decisions on disk and the events read back through the events API all agree.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
from conftest import TINY_PARAMS, toy_frame
from prefect_events import named, ratchet_events
from test_served_deployment import RUN_SECONDS, TERMINAL, client_for, decisions, served

from flows import events
from tasks.intake.batch import batch_id_of
from tasks.registry.store import Registry


def _automation(api: str, deployment_id: str) -> dict:
    """The automation `ratchet serve` made of the deployment's trigger (created just after
    the deployment itself)."""
    import time

    deadline = time.monotonic() + 60
    while True:
        found = httpx.post(f"{api}/automations/filter", json={}, timeout=30).json()
        mine = [a for a in found if a["actions"] and a["actions"][0].get("deployment_id") == deployment_id]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(mine) == 1, found
    return mine[0]


def _runs_of(api: str, deployment_id: str, count: int) -> list:
    import time

    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + RUN_SECONDS
    with client_for(api) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
            if len(runs) >= count and all(r.state and r.state.type.value in TERMINAL for r in runs):
                return runs
            time.sleep(1)
    raise AssertionError(f"{count} runs of the retrain deployment not finished within {RUN_SECONDS} s")


def test_two_landed_events_for_one_file_start_two_runs_and_train_it_once(tmp_path):
    with served(tmp_path, params=TINY_PARAMS + "ops: {watch_interval_seconds: 0}\n") as srv:
        api, ws = srv["api"], srv["ws"]
        deployment_id = httpx.get(f"{api}/deployments/name/retrain/ratchet-retrain", timeout=10).json()["id"]
        trigger = _automation(api, deployment_id)
        assert trigger["trigger"]["expect"] == [events.LANDED]
        assert trigger["trigger"]["match"] == {"prefect.resource.id": events.workspace_resource_id(ws),
                                               events.START_RUN: "true"}
        (action,) = trigger["actions"]
        assert action["type"] == "run-deployment" and "event.payload.file" in str(action["parameters"]["batch"])

        batch = tmp_path / "A.csv"
        toy_frame(["weather", "music"], per_label=30, seed=1, slice_name="A").to_csv(batch, index=False)
        notify = [subprocess.Popen([sys.executable, "-m", "flows.cli", "notify-landed", str(batch),
                                    "--workspace", str(ws)], env=srv["env"], cwd=tmp_path, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
        for proc in notify:
            out, _ = proc.communicate(timeout=RUN_SECONDS)
            assert proc.returncode == 0, out

        runs = _runs_of(api, deployment_id, 2)
        assert len(runs) == 2 and {r.state.type.value for r in runs} == {"COMPLETED"}, \
            (tmp_path / "serve.log").read_text()[-3000:]
        assert {r.parameters["batch"] for r in runs} == {str(batch)}
        assert {r.parameters["workspace"] for r in runs} == {str(ws)}
        made = decisions(ws)
        assert sorted(d["status"] for d in made) == ["promoted", "skipped"], [d["reasons"] for d in made]
        (skipped,) = [d for d in made if d["status"] == "skipped"]  # found it in hand, or already decided
        assert "another run" in skipped["reasons"][0] or "already accepted" in skipped["reasons"][0]
        reg = Registry(ws / "models")
        assert reg.versions() == ["v0001"] and reg.metadata("v0001")["batch_ids"] == [batch_id_of(batch)]

        found = ratchet_events(api, ws, lambda f: named(f, events.PROMOTED), settle=True)
        assert [len(named(found, e)) for e in (events.LANDED, events.ACCEPTED, events.PROMOTED)] == [2, 1, 1]
        assert named(found, events.PROMOTED)[0]["payload"]["version"] == "v0001"
