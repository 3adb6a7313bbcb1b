"""Follow production: the version a server answers with, swapped when the alias moves.

A `Follower` holds one reference to the loaded version (`Served`). `refresh()` looks at
the registry's aliases.json (each move replaces the file, so a changed inode or mtime
means a move); when `production` names another version, that version is checked against
its integrity manifest and loaded *beside* the current one, and only then does the
reference move. A batch of requests in flight finishes on the version it started with,
the next one gets the new version, and no request waits for a load. A version that does
not verify or load is not served: the old one stays, and `/health` says why
(`last_error`). Rollback is the same move backwards.

With a mirror (`ratchet serve-model --from-mirror`, registry.mirror in params.yaml) each
refresh first pulls the mirror's production into the local registry when it differs
(tasks/registry/registry_s3.py `pull`: every file checked against its manifest), so a
serving machine follows the S3 registry without a shared disk; a mirror that cannot be
reached leaves the served version as it is.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tasks.core.config import Params
from tasks.kinds import get_kind
from tasks.kinds.base import Predictor
from tasks.registry.registry_s3 import Mirror, pull
from tasks.registry.store import Registry


@dataclass(frozen=True)
class Served:
    version: str
    task: str
    predictor: Predictor
    loaded_at: float
    load_seconds: float


class Follower:
    def __init__(self, reg: Registry, params: Params, alias: str = "production", mirror: Mirror | None = None):
        self.reg, self.params, self.alias, self.mirror = reg, params, alias, mirror
        self.current: Served | None = None
        self.swaps = 0
        self.last_error: str | None = None
        self._stamp: tuple | None = None
        self._refreshing = threading.Lock()  # one load at a time; requests never take it

    def _aliases_stamp(self) -> tuple | None:
        try:
            st = self.reg.aliases_path.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def refresh(self) -> bool:
        """Load and switch to the alias's version if it moved; True when the served version changed."""
        with self._refreshing:
            if self.mirror is not None and not self._pulled():
                return False
            stamp = self._aliases_stamp()
            if stamp is not None and stamp == self._stamp:
                return False
            version = self.reg.resolve(self.alias)
            self._stamp = stamp
            if version is None:
                self.last_error = f"the registry at {self.reg.root} has no '{self.alias}' version"
                return False
            if self.current is not None and version == self.current.version:
                return False
            try:
                served = self.load(version)
            except Exception as exc:  # keep answering with what works
                self.last_error = f"{version} not served: {type(exc).__name__}: {exc}"
                return False
            self.swaps += self.current is not None
            self.current, self.last_error = served, None  # the one switch: a reference assignment
            return True

    def _pulled(self) -> bool:
        """Bring the mirror's version of the alias into the local registry; False (and
        last_error) when the mirror cannot be read or the version does not verify."""
        try:
            remote = self.mirror.aliases()[0].get(self.alias)
            if remote and remote != self.reg.resolve(self.alias):
                pull(self.mirror, self.reg, remote, promote=False)
                why = f"followed {self.mirror.uri}"
                self.reg.promote(remote, why) if self.alias == "production" else self.reg.set_alias(self.alias, remote, why)
            return True
        except Exception as exc:  # S3 down, a partial upload: serve what is here
            self.last_error = f"mirror {self.mirror.uri}: {type(exc).__name__}: {exc}"
            return False

    def load(self, version: str) -> Served:
        start = time.perf_counter()
        path: Path = self.reg.checked_path(version)  # a version that fails its manifest is never served
        kind = get_kind(self.reg.metadata(version).get("task", "classification"))
        predictor = kind.predictor(path, self.params)
        return Served(version, kind.name, predictor, time.time(), round(time.perf_counter() - start, 3))
