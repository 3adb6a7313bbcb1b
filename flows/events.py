"""Events: what happens to a batch and a model, as Prefect events.

Every event names the workspace as its resource (`ratchet.workspace.<name>-<hash of its
path>`), the batch and the version as related resources, and carries the batch id,
version and report paths in its payload, so an automation, a served model or a
dashboard can follow a workspace without reading its folders:

- `ratchet.batch.landed`: a file was delivered (`ratchet notify-landed`, a relay, the
  landing-zone watcher). Events whose resource is labelled `ratchet.start-run: "true"`
  start a run of the retrain deployment (its trigger, flows/deploy.py); the watcher's
  carry "false": the sweep that saw the file runs it itself;
- `ratchet.batch.accepted` / `.quarantined`: validation passed / rejected the batch;
- `ratchet.batch.pending`: kept for the next retrain (policy said wait, or gate said no);
- `ratchet.model.promoted` / `.rejected` / `.rolled-back`: production moved to a new
  version, a candidate was turned down, production moved back.

The payloads are pure functions; `emit` (inside a flow run: the run, flow and deployment
are attached as related resources by Prefect) and `send` (a CLI command: delivered now,
or an error) are the thin edge at the bottom. Neither is ever allowed to fail a run.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

LANDED = "ratchet.batch.landed"
ACCEPTED = "ratchet.batch.accepted"
QUARANTINED = "ratchet.batch.quarantined"
PENDING = "ratchet.batch.pending"
PROMOTED = "ratchet.model.promoted"
REJECTED = "ratchet.model.rejected"
ROLLED_BACK = "ratchet.model.rolled-back"
START_RUN = "ratchet.start-run"  # label of a landed event's resource: "true" asks for a retrain run


def workspace_resource_id(root: str | Path) -> str:
    """`ratchet.workspace.<name>-<8 hex of the resolved path>`: readable, and distinct for
    two workspaces of the same name."""
    root = Path(root).resolve()
    name = re.sub(r"[^a-z0-9-]+", "-", root.name.lower()).strip("-") or "root"
    return f"ratchet.workspace.{name}-{hashlib.sha256(str(root).encode()).hexdigest()[:8]}"


def workspace_resource(root: str | Path, **labels: str) -> dict[str, str]:
    root = Path(root).resolve()
    return {"prefect.resource.id": workspace_resource_id(root), "prefect.resource.name": root.name,
            "ratchet.workspace.path": str(root), **labels}


def related(batch_id: str | None = None, version: str | None = None) -> list[dict[str, str]]:
    """The batch and the version an event is about, as related resources."""
    out = []
    if batch_id:
        out.append({"prefect.resource.id": f"ratchet.batch.{batch_id}", "prefect.resource.role": "batch",
                    "prefect.resource.name": batch_id})
    if version:
        out.append({"prefect.resource.id": f"ratchet.model.{version}", "prefect.resource.role": "version",
                    "prefect.resource.name": version})
    return out


def landed(file: str, batch_id: str | None, origin: str) -> dict[str, Any]:
    """A landed event's payload: `file` is what the trigger passes as the `batch` parameter."""
    return {"file": file, "batch_id": batch_id, "origin": origin}


def accepted(batch_id: str, run_id: str, source: str, validation: dict, run_dir: Path) -> dict[str, Any]:
    return {"batch_id": batch_id, "run_id": run_id, "file": source, "rows": validation.get("rows"),
            "kept_rows": (validation.get("counts") or {}).get("kept_rows"), "reports": {"run": str(run_dir)}}


def decision(outcome: dict, reports: dict[str, str], previous: str | None) -> list[tuple[str, dict[str, Any]]]:
    """(event, payload) for what a decision changed; none for a duplicate that changed nothing
    (already accepted, already pending, in production, or being trained by another run)."""
    details = outcome.get("details") or {}
    base = {"batch_id": outcome["batch_id"], "run_id": outcome["run_id"], "status": outcome["status"],
            "version": outcome.get("version"), "production": outcome.get("production"),
            "reasons": list(outcome.get("reasons") or [])[:10], "reports": reports}
    status = outcome["status"]
    if status == "quarantined":
        return [(QUARANTINED, {**base, "quarantine": details.get("quarantine")})]
    if status == "promoted":
        return [(PROMOTED, {**base, "previous": previous, "attempts": len(details.get("attempts") or []),
                            "by": "retrain"})]
    pending = {**base, "pending": details.get("pending") or []}
    if status == "rejected":
        return [(REJECTED, {**base, "attempts": len(details.get("attempts") or [])}),
                (PENDING, {**pending, "why": "rejected by the gate"})]
    if status == "skipped" and (details.get("policy") or {}).get("retrain") is False:
        return [(PENDING, {**pending, "why": "retrain policy"})]
    return []


def moved(version: str, previous: str | None, reason: str | None, by: str, batch_id: str | None,
          models_dir: Path) -> dict[str, Any]:
    """The payload of a manual production move (`ratchet rollback`, `ratchet models promote`)."""
    return {"batch_id": batch_id, "version": version, "production": version, "previous": previous,
            "reason": reason, "by": by,
            "reports": {"history": str(models_dir / "history.jsonl"),
                        "card": str(models_dir / "versions" / version / "README.md")}}


# --- Prefect edge ------------------------------------------------------------------


def enabled() -> bool:
    """A server to hear events (PREFECT_API_URL). CLI commands send only then: without one,
    emitting would start a temporary server that nobody listens to."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def emit(event: str, root: str | Path, payload: dict, batch_id: str | None = None, version: str | None = None,
         **labels: str) -> None:
    """Emit from inside a flow run (queued, sent in the background); logged, never raised."""
    from prefect.events import emit_event

    try:
        emit_event(event, resource=workspace_resource(root, **labels), related=related(batch_id, version),
                   payload=payload)
    except Exception as exc:  # an event too large, a broken client: the run's decision stands
        from prefect.logging import get_logger

        get_logger("ratchet.events").warning("event %s not emitted: %s", event, exc)


def send(event: str, root: str | Path, payload: dict, batch_id: str | None = None, version: str | None = None,
         **labels: str) -> str:
    """Deliver one event to the server now (a CLI command's, outside any flow run); returns
    its id, raises when the server cannot be reached."""
    import asyncio

    from prefect.events import Event
    from prefect.events.clients import get_events_client

    built = Event(event=event, resource=workspace_resource(root, **labels), related=related(batch_id, version),
                  payload=payload)

    async def deliver() -> None:
        async with get_events_client(reconnection_attempts=2) as client:
            await client.emit(built)

    asyncio.run(deliver())
    return str(built.id)
