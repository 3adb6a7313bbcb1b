"""Promotion lock: one run at a time trains from, judges against and moves production.

Two runs that fine-tune from the same champion and promote one after the other would
leave the second's candidate without the first's batch, and two writers numbering
versions at once would collide. The retrain flow therefore holds this lock from
resolving the champion to moving the alias. It is two locks, taken in one order:

- a Prefect global concurrency limit (one slot, `ops.promote_limit`), which serialises
  runs on every machine that talks to the same Prefect server (work pools, Kubernetes);
- an exclusive `flock` on `models/.promote.lock`, which serialises runs on one host even
  when each uses its own temporary Prefect server (two `ratchet retrain` from cron).

The Prefect limit is taken only against a real server (PREFECT_API_URL set). Its slots
are leases that the server's background services take back when a holder dies; the
temporary server a plain `ratchet retrain` starts runs none of those services and keeps
its database in ~/.prefect, so a run killed while holding the slot (the very case
checkpoints and resume exist for) would block every later run. The kernel releases a
flock when its process dies, whatever the cause.

`batch_claim` is the per-batch lock the flow takes first: a second run for a batch that
a run is training right now does nothing.
"""

from __future__ import annotations

import fcntl
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

POLL_SECONDS = 0.5


class LockTimeout(TimeoutError):
    """The promotion lock was not free within `ops.lock_timeout_seconds`."""


@contextmanager
def file_lock(path: Path, timeout: float | None) -> Iterator[None]:
    """An exclusive flock on `path`, waiting at most `timeout` seconds (None: forever)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    with open(path, "w") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockTimeout(f"lock: {path} still held by another run after {timeout:.0f} s "
                                      "(raise ops.lock_timeout_seconds, or look for a stuck run)") from None
                time.sleep(POLL_SECONDS)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_limit(name: str, limit: int = 1) -> None:
    """Create the global concurrency limit when missing. Prefect ignores a limit that does
    not exist (no lock at all), so the flow and `ratchet serve` both make sure of it."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            except ObjectAlreadyExists:  # another run created it a moment ago
                pass


@contextmanager
def promotion_lock(models_dir: Path, limit_name: str, timeout_seconds: int) -> Iterator[None]:
    """Hold the registry's promotion lock (`timeout_seconds` 0 = wait as long as it takes;
    `limit_name` "" = the file lock only, for a registry only one host writes to)."""
    from prefect.concurrency.sync import concurrency

    from prefect.settings import PREFECT_API_URL

    timeout = float(timeout_seconds) if timeout_seconds else None
    started = time.monotonic()
    with ExitStack() as stack:
        if limit_name and PREFECT_API_URL.value():  # a real server: see the module docstring
            ensure_limit(limit_name)
            try:
                stack.enter_context(concurrency(limit_name, occupy=1, timeout_seconds=timeout, strict=True))
            except TimeoutError as exc:
                raise LockTimeout(f"lock: the Prefect concurrency limit '{limit_name}' stayed taken for "
                                  f"{timeout_seconds} s (ops.lock_timeout_seconds)") from exc
        left = None if timeout is None else max(timeout - (time.monotonic() - started), 1.0)
        stack.enter_context(file_lock(models_dir / ".promote.lock", left))
        yield


@contextmanager
def batch_claim(root: Path, batch_id: str) -> Iterator[bool]:
    """An exclusive flock on `.ratchet/running/<batch id>.lock`, not waited for: True while
    this run is the only one on the batch, False when another run holds it (a burst of
    landed events for one file). The kernel releases it when its holder dies, so a killed
    run is resumed by the next one."""
    path = Path(root) / ".ratchet" / "running" / f"{batch_id}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
