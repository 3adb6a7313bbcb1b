"""Landing zone: which delivered files are new, in arrival order, and which were handled.

The top of the path: a data team drops batch files into a folder or under an s3://
prefix. `arrivals` lists them oldest first (modification time, then name) and gives
each its content-hash batch id, the same id intake will compute, so one file delivered
twice, or under two names, is one batch. The `Ledger` is the processed-set: a JSON file
in the workspace, written atomically, so a restarted watcher never triggers a batch
twice. Files from S3 are copied into the workspace first (the retrain flow reads local
files); unchanged objects are not downloaded again to be hashed.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from tasks.core import storage
from tasks.intake.batch import batch_id_for, is_supported
from tasks.core.workspace import Workspace

LEDGER_FILE = "landing-ledger.json"


class LandingBusy(RuntimeError):
    """Another sweep of this landing zone holds the ledger."""


@dataclass(frozen=True)
class Arrival:
    """One delivered file: where it landed, the local copy the flow reads, its batch id."""

    uri: str
    path: str
    batch_id: str
    arrived: float  # seconds since the epoch: mtime, or S3 LastModified
    size: int
    fingerprint: str  # ETag, or mtime and size: unchanged means no need to hash again


def _is_batch(name: str) -> bool:
    # hidden and partial files (".x.csv", "x.csv.part") are uploads still in progress
    return not name.startswith(".") and is_supported(name)  # "b.csv.gz" too


def _listing(landing: str, ws: Workspace) -> list[tuple[str, float, int, str]]:
    """(uri, arrived, size, fingerprint) of every batch file, oldest first."""
    if storage.is_s3(landing):
        return [(o.uri, o.last_modified, o.size, o.etag) for o in storage.list_objects(landing.rstrip("/") + "/")
                if _is_batch(o.uri.rsplit("/", 1)[-1])]
    root = Path(landing) if Path(landing).is_absolute() else ws.root / landing
    if not root.is_dir():
        return []
    found = []
    for path in root.rglob("*"):
        if path.is_file() and _is_batch(path.name):
            stat = path.stat()
            found.append((str(path), stat.st_mtime, stat.st_size, f"{stat.st_mtime_ns}:{stat.st_size}"))
    return sorted(found, key=lambda f: (f[1], f[0]))


def _local_copy(uri: str, ws: Workspace) -> Path:
    if not storage.is_s3(uri):
        return Path(uri)
    bucket, key = storage.split_s3(uri)
    return ws.data_dir / "landing-s3" / bucket / key


def arrivals(landing: str, ws: Workspace, fingerprints: dict[str, dict] | None = None) -> list[Arrival]:
    """Every batch file under `landing` with its batch id, oldest first. `fingerprints`
    (uri -> {"fingerprint", "batch_id"}, kept in the ledger) spares re-reading files
    that have not changed since the last sweep."""
    fingerprints = fingerprints or {}
    out = []
    for uri, arrived, size, fingerprint in _listing(landing, ws):
        local = _local_copy(uri, ws)
        known = fingerprints.get(uri, {})
        if known.get("fingerprint") == fingerprint and local.exists():
            batch_id = known["batch_id"]
        else:
            raw = storage.read_bytes(uri)
            if storage.is_s3(uri):
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_bytes(raw)
            batch_id = batch_id_for(raw)
        out.append(Arrival(uri, str(local), batch_id, arrived, size, fingerprint))
    return out


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class Ledger:
    """The processed-set of a landing zone: batch id -> what happened to it. Every change
    is written to disk before the caller moves on (atomic replace)."""

    def __init__(self, path: Path):
        self.path = path
        data = json.loads(path.read_text()) if path.exists() else {}
        self.batches: dict[str, dict] = data.get("batches", {})
        self.fingerprints: dict[str, dict] = data.get("fingerprints", {})

    def __contains__(self, batch_id: str) -> bool:
        return batch_id in self.batches

    def new(self, found: list[Arrival]) -> list[Arrival]:
        """Arrivals whose batch id was never claimed, oldest first, each id once."""
        seen, out = set(self.batches), []
        for arrival in found:
            if arrival.batch_id not in seen:
                seen.add(arrival.batch_id)
                out.append(arrival)
        return out

    def remember(self, found: list[Arrival]) -> None:
        """Keep each file's fingerprint and batch id, so the next sweep need not re-read it."""
        self.fingerprints = {a.uri: {"fingerprint": a.fingerprint, "batch_id": a.batch_id} for a in found}
        self.save()

    def claim(self, arrival: Arrival, **info) -> None:
        """Record a batch as taken before its run starts: a crash after this line never
        leads to a second run of the same batch."""
        if arrival.batch_id in self.batches:
            raise ValueError(f"landing: batch {arrival.batch_id} was already claimed")
        self.batches[arrival.batch_id] = {**asdict(arrival), "claimed_at": _now(), "status": "claimed", **info}
        self.save()

    def update(self, batch_id: str, **info) -> None:
        self.batches[batch_id] = {**self.batches[batch_id], **info, "updated_at": _now()}
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        blob = json.dumps({"batches": self.batches, "fingerprints": self.fingerprints}, indent=2, sort_keys=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        with os.fdopen(fd, "w") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)


def ledger_path(ws: Workspace) -> Path:
    return ws.root / ".ratchet" / LEDGER_FILE


@contextmanager
def open_ledger(ws: Workspace) -> Iterator[Ledger]:
    """The workspace's ledger, held exclusively: a second sweep started meanwhile (the
    nightly schedule while the watcher runs) gets `LandingBusy` instead of a double run."""
    path = ledger_path(ws)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise LandingBusy(f"landing: another sweep holds {path}; this one does nothing") from exc
        try:
            yield Ledger(path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
