"""Read a workspace's Ratchet events back from a Prefect server (POST /api/events/filter).

The server persists events in the background (every few seconds), so `ratchet_events`
polls until `until(events)` holds; events a test's own process emitted are flushed
first. `settle` then waits one persister interval more, for tests that count events or
assert one was not sent.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from flows.events import workspace_resource_id

PERSIST_SECONDS = 7  # the event persister's flush interval (5 s) and a margin


def flush() -> None:
    """Send what this process's events worker still holds (a flow run in-process)."""
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=60)


def read(api: str, workspace: str | Path) -> list[dict]:
    """Every `ratchet.*` event whose resource is this workspace, oldest first."""
    body = {"filter": {"event": {"prefix": ["ratchet."]},
                       "resource": {"id": [workspace_resource_id(workspace)]}, "order": "ASC"}, "limit": 50}
    got = httpx.post(f"{api.rstrip('/')}/events/filter", json=body, timeout=30)
    got.raise_for_status()
    return got.json()["events"]


def ratchet_events(api: str, workspace: str | Path, until=lambda found: bool(found), seconds: float = 120,
                   settle: bool = False) -> list[dict]:
    flush()
    deadline = time.monotonic() + seconds
    found = read(api, workspace)
    while not until(found):
        if time.monotonic() > deadline:
            raise AssertionError(f"events of {workspace}: not there within {seconds} s; got "
                                 f"{[e['event'] for e in found]}")
        time.sleep(1)
        found = read(api, workspace)
    if settle:
        time.sleep(PERSIST_SECONDS)
        found = read(api, workspace)
    return found


def named(found: list[dict], name: str) -> list[dict]:
    return [e for e in found if e["event"] == name]


def related_ids(event: dict) -> set[str]:
    return {r["prefect.resource.id"] for r in event.get("related") or []}
