"""Deployments: how Ratchet runs unattended (schedules, landing-zone triggers, manual runs).

`ratchet serve` (or `python -m flows.deploy`) serves three deployments from one process:

- `retrain/ratchet-retrain`: the retrain flow, for data-team triggered runs
  (`prefect deployment run retrain/ratchet-retrain --param batch=PATH`), and started by
  its trigger on each `ratchet.batch.landed` event of this workspace that asks for a run
  (`ratchet notify-landed FILE`, a storage-notification relay): the event's `file` is
  the `batch` parameter;
- `sweep-landing/ratchet-nightly`: on `ops.schedule_cron`, every batch waiting in the
  landing zone is retrained, one after another in arrival order;
- `sweep-landing/ratchet-watch`: the same sweep every `ops.watch_interval_seconds`, so a
  dropped file is picked up within a minute.

A sweep claims each new batch id in the workspace's ledger (tasks/intake/landing.py) before its
run starts, so every batch is triggered exactly once, across restarts and overlapping
sweeps. `prefect.yaml` declares the same deployments for work pools (process locally,
Kubernetes in production); with `fan_out` a sweep starts each batch as its own run of
`ratchet-retrain` on the pool instead of running it in-line.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from prefect import flow, get_run_logger

from flows import events
from flows.retrain import retrain
from tasks.core.config import load_params
from flows.steps import arrivals_task
from tasks.intake.landing import Arrival, Ledger, open_ledger
from flows.lock import ensure_limit
from tasks.core.workspace import Workspace

RETRAIN = "ratchet-retrain"
NIGHTLY = "ratchet-nightly"
WATCH = "ratchet-watch"


def _sweep_name() -> str:
    from prefect.runtime import flow_run

    return f"sweep-{Path(str(flow_run.parameters.get('workspace', '.'))).resolve().name}"


def _trigger(arrival: Arrival, ws: Workspace, deployment: str) -> str:
    """Start the batch as its own run of the retrain deployment (on whatever pool serves
    it). The idempotency key makes the server refuse a second run for this batch id even
    if this sweep dies between creating the run and recording it."""
    from prefect.deployments import run_deployment

    key = hashlib.sha256(f"{ws.root}:{arrival.batch_id}".encode()).hexdigest()[:24]
    started = run_deployment(f"retrain/{deployment}", parameters={"batch": arrival.path, "workspace": str(ws.root)},
                             timeout=0, idempotency_key=f"ratchet-{key}", tags=["ratchet", "landing"])
    return str(started.id)


def _run_inline(arrival: Arrival, ws: Workspace, ledger: Ledger) -> bool:
    """Retrain one batch as a child flow run; records the outcome, True unless it crashed."""
    try:
        outcome = retrain(batch=arrival.path, workspace=str(ws.root))
    except Exception as exc:  # recorded and reported at the end; the next batch still runs
        ledger.update(arrival.batch_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        return False
    ledger.update(arrival.batch_id, status=outcome["status"], run_id=outcome["run_id"],
                  production=outcome["production"])
    return True


@flow(name="sweep-landing", flow_run_name=_sweep_name, log_prints=True)
def sweep_landing(workspace: str = ".", landing: str | None = None, fan_out: bool = False,
                  retrain_deployment: str = RETRAIN) -> list[dict]:
    """Retrain every new batch in the landing zone, oldest first, each batch id once
    (in-line, or with `fan_out` as runs of the `retrain/<retrain_deployment>` deployment)."""
    ws = Workspace.at(workspace)
    landing = landing or load_params(ws.params_path).ops.landing
    logger = get_run_logger()
    handled, failed = [], []
    with open_ledger(ws) as ledger:
        found = arrivals_task(landing, ws, ledger.fingerprints)
        ledger.remember(found)
        new = ledger.new(found)
        logger.info("landing %s: %d file(s), %d new batch(es)", landing, len(found), len(new))
        for arrival in new:
            ledger.claim(arrival)  # on disk before the run starts
            # announced, not a request: this sweep runs it (START_RUN "false": the trigger ignores it)
            events.emit(events.LANDED, ws.root, events.landed(arrival.path, arrival.batch_id, "watch"),
                        batch_id=arrival.batch_id, **{events.START_RUN: "false"})
            if fan_out:
                ledger.update(arrival.batch_id, status="triggered", flow_run_id=_trigger(arrival, ws, retrain_deployment))
            elif not _run_inline(arrival, ws, ledger):
                failed.append(arrival.batch_id)
            handled.append(ledger.batches[arrival.batch_id])
    if failed:
        raise RuntimeError(f"sweep: {len(failed)} batch(es) failed unexpectedly: {', '.join(failed)} "
                           f"(see {ws.root / '.ratchet' / 'landing-ledger.json'})")
    return handled


def landed_trigger(workspace: str | Path = "."):
    """The retrain deployment's trigger: one run per `ratchet.batch.landed` event of this
    workspace labelled `ratchet.start-run: "true"`, its `file` as the `batch` parameter
    (the deployment's own `workspace` parameter is kept). A burst of events for one file
    starts several runs; the flow makes every one but the first a no-op (flows/retrain.py)."""
    from prefect.events import DeploymentEventTrigger

    resource = events.workspace_resource_id(workspace)
    return DeploymentEventTrigger(
        name=f"ratchet-landed-{resource.rsplit('.', 1)[1]}", expect={events.LANDED},
        match={"prefect.resource.id": resource, events.START_RUN: "true"},
        parameters={"batch": "{{ event.payload.file }}"},
        description=f"retrain on every file landed in {Path(workspace).resolve()} (ratchet notify-landed)")


def deployments(workspace: str | Path = "."):
    """The three deployments for `serve`, parameterised with this workspace."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    ws = Workspace.at(workspace)
    ops = load_params(ws.params_path).ops
    # overlapping sweeps would only find the ledger busy: drop the newer one
    one_sweep = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
    common = {"parameters": {"workspace": str(ws.root)}, "tags": ["ratchet"],
              "entrypoint_type": EntrypointType.MODULE_PATH}
    built = [
        retrain.to_deployment(RETRAIN, description="Retrain on one batch: --param batch=PATH, or on a landed event",
                              triggers=[landed_trigger(ws.root)], **common),
        sweep_landing.to_deployment(NIGHTLY, schedules=[Cron(ops.schedule_cron, timezone=ops.timezone)],
                                    concurrency_limit=one_sweep, description="Every waiting batch, in arrival order",
                                    **common),
    ]
    if ops.watch_interval_seconds:
        built.append(sweep_landing.to_deployment(WATCH, interval=ops.watch_interval_seconds, concurrency_limit=one_sweep,
                                                 description="Pick up newly landed batches", **common))
    return built


def serve_all(workspace: str | Path = ".", limit: int | None = None) -> None:
    """Serve the deployments until interrupted; runs execute as subprocesses of this one."""
    from prefect import serve

    ops = load_params(Workspace.at(workspace).params_path).ops
    if ops.promote_limit:
        ensure_limit(ops.promote_limit)  # an absent limit would not serialise anything
    serve(*deployments(workspace), limit=limit)


if __name__ == "__main__":
    import sys

    serve_all(sys.argv[1] if len(sys.argv) > 1 else ".")
