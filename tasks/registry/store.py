"""Registry: immutable model versions and the aliases that point at them.

models/
  versions/v0001/   save_pretrained safetensors, tokenizer, label_map.json,
                    replay.parquet + replay.json, metadata.json (lineage, metrics, gate)
  aliases.json      {"production": "v0002", "previous": "v0001"}  (the only mutable file)
  production        symlink to versions/<production version>, for tools that want a path

A version appears by renaming a fully written temporary directory, and an alias moves
by one `os.replace` of aliases.json, so a crash at any moment leaves production pointing
at a complete version. Rollback is moving the alias back. Numbering and alias moves hold
an flock on models/.lock, so concurrent promotions never share a number or lose a move.

Each version's metadata.json records the SHA-256 and size of every other file in it
(`files`, `file_sizes`), and production only ever moves to a version that still matches
them (tasks/registry/integrity.py). Every alias move is appended to history.jsonl with its reason
and who made it, so "why is production v0007?" has an answer. Each version also carries a
README.md model card (tasks/registry/card.py), hashed like any other file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import fcntl
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tasks.registry.card import render_card
from tasks.registry.integrity import WEIGHTS_FILE, check, check_weights, manifest, sha256_file
from tasks.registry.matrix import stamp
from tasks.train.stats_head import STATS_FILE

CARD_FILE = "README.md"
LABEL_MAP_FILE = "label_map.json"  # as tasks.train.model writes it; not imported, to keep torch out


class RegistryError(RuntimeError):
    pass


@dataclass(frozen=True)
class Registry:
    root: Path

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    @property
    def aliases_path(self) -> Path:
        return self.root / "aliases.json"

    def versions(self) -> list[str]:
        if not self.versions_dir.exists():
            return []
        names = [p.name for p in self.versions_dir.iterdir() if p.is_dir() and p.name[1:].isdigit()]
        return sorted(names, key=lambda name: int(name[1:]))

    def aliases(self) -> dict[str, str]:
        if not self.aliases_path.exists():
            return {}
        return json.loads(self.aliases_path.read_text())

    def path(self, version: str) -> Path:
        path = self.versions_dir / version
        if not (path / "metadata.json").exists():
            raise RegistryError(f"registry: no version '{version}' under {self.versions_dir}")
        return path

    def resolve(self, alias: str) -> str | None:
        """The version an alias points at, or None when the alias is not set."""
        return self.aliases().get(alias)

    def metadata(self, version: str) -> dict:
        return json.loads((self.path(version) / "metadata.json").read_text())

    @property
    def history_path(self) -> Path:
        return self.root / "history.jsonl"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock on models/.lock (flock: across processes and threads) around
        numbering and alias moves, so two promotions at once get distinct versions and both
        history lines. Not reentrant: hold it around the smallest step that needs it."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # blocks until the other writer is done
            yield  # closing the file releases the lock

    def register(self, candidate_dir: Path, metadata: dict) -> str:
        """Copy a candidate in as the next immutable version; returns its name."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.versions_dir))
        try:
            shutil.copytree(candidate_dir, staging, dirs_exist_ok=True)
            hashed = manifest(staging)  # the slow part (each file read once), outside the lock
            with self.lock():
                existing = self.versions()
                version = f"v{int(existing[-1][1:]) + 1 if existing else 1:04d}"
                metadata = self._seal(staging, {**metadata, "version": version}, *hashed)
                (staging / "metadata.json").write_text(json.dumps(metadata, indent=2, default=str))
                os.rename(staging, self.versions_dir / version)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return version

    def _seal(self, staging: Path, metadata: dict, files: dict[str, str], sizes: dict[str, int]) -> dict:
        """Write the model card, then add its hash to the candidate's file hashes in the
        metadata; last, so the hashes describe exactly what is renamed into place."""
        if WEIGHTS_FILE not in files:
            raise RegistryError(f"registry: the candidate has no {WEIGHTS_FILE}")
        metadata = {**metadata, "weights_sha256": _predictor_sha(files[WEIGHTS_FILE], files.get(STATS_FILE))}
        if metadata.get("accuracy_matrix"):  # its newest row is this version
            metadata["accuracy_matrix"] = stamp(metadata["accuracy_matrix"], metadata["version"])
        label_map = staging / LABEL_MAP_FILE
        if "labels" not in metadata and label_map.is_file():
            metadata["labels"] = json.loads(label_map.read_text()).get("labels", [])
        lineage = [lineage_entry(metadata)] + self._parent_lineage(metadata.get("parent"), metadata["version"])
        card = staging / CARD_FILE
        card.write_text(render_card(metadata, lineage))
        files[CARD_FILE], sizes[CARD_FILE] = sha256_file(card), card.stat().st_size
        return {**metadata, "files": dict(sorted(files.items())), "file_sizes": dict(sorted(sizes.items()))}

    def lineage(self, version: str) -> list[dict]:
        """`version` and its ancestors, newest first, back to the first batch (or to the
        first parent that is no longer in the registry)."""
        meta = self.metadata(version)
        return [lineage_entry(meta)] + self._parent_lineage(meta.get("parent"), version)

    def _parent_lineage(self, parent: str | None, child: str) -> list[dict]:
        out: list[dict] = []
        seen = {child}
        while parent and parent not in seen and (self.versions_dir / parent / "metadata.json").exists():
            seen.add(parent)  # a hand-edited cycle must not hang `ratchet status`
            meta = self.metadata(parent)
            out.append(lineage_entry(meta))
            parent = meta.get("parent")
        return out

    def verify(self, version: str) -> list[str]:
        """Integrity problems of a stored version (missing, truncated or changed files);
        empty when intact. Versions from before manifests: the weights hash only."""
        root = self.path(version)
        try:
            meta = self.metadata(version)
        except json.JSONDecodeError as exc:
            return [f"unreadable metadata.json: {exc}"]
        if "files" in meta:
            return check(root, meta["files"], meta.get("file_sizes"))
        return check_weights(root, meta.get("weights_sha256"))

    def checked_path(self, version: str) -> Path:
        """The path of a version that verifies; RegistryError naming each bad file otherwise."""
        problems = self.verify(version)
        if problems:
            raise RegistryError(f"registry: {version} failed its integrity check: " + "; ".join(problems))
        return self.path(version)

    def find_weights(self, sha256: str) -> str | None:
        """The version whose weights hash to `sha256`, if any (audits use this)."""
        for version in self.versions():
            if self.metadata(version).get("weights_sha256") == sha256:
                return version
        return None

    def set_alias(self, alias: str, version: str, reason: str | None = None) -> None:
        """Point `alias` at `version` with one atomic replace of aliases.json."""
        with self.lock():
            self._move({alias: version}, reason)

    def promote(self, version: str, reason: str | None = None) -> None:
        """Make `version` production; the old production becomes `previous` (one write).
        A version that fails its integrity check is refused: production never moves onto
        bytes that differ from the ones the gate judged."""
        self.checked_path(version)
        with self.lock():  # read the current production and move it in one step
            current = self.resolve("production")
            moves = {"production": version}
            if current and current != version:
                moves["previous"] = current
            self._move(moves, reason)

    def rollback(self, reason: str | None = None) -> str:
        """Move production back to `previous` (which then names the rolled-back version)."""
        previous = self.resolve("previous")
        if not previous:
            raise RegistryError("registry: no 'previous' alias, nothing to roll back to")
        self.promote(previous, reason)
        return previous

    def history(self) -> list[dict]:
        """Every recorded alias move, oldest first."""
        if not self.history_path.exists():
            return []
        return [json.loads(line) for line in self.history_path.read_text().splitlines() if line.strip()]

    def _move(self, moves: dict[str, str], reason: str | None = None) -> None:
        """Callers hold self.lock()."""
        for version in moves.values():
            self.path(version)  # never point at a missing version
        before = self.aliases()
        aliases = {**before, **moves}
        _atomic_write(self.aliases_path, json.dumps(aliases, indent=2, sort_keys=True))
        if "production" in moves:
            self._link_production(moves["production"])
        self._record(before, moves, reason)

    def _record(self, before: dict[str, str], moves: dict[str, str], reason: str | None) -> None:
        """Append one history line per alias that actually moved. After the alias write:
        a crash in between loses a log line, never leaves a line for a move not made."""
        time = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        who = os.environ.get("USER") or "unknown"
        lines = [json.dumps({"time": time, "alias": alias, "from": before.get(alias), "to": version,
                             "reason": reason, "who": who})
                 for alias, version in sorted(moves.items()) if before.get(alias) != version]
        if lines:
            with open(self.history_path, "a") as handle:
                handle.write("\n".join(lines) + "\n")
                handle.flush()
                os.fsync(handle.fileno())

    def recover(self) -> list[str]:
        """Finish what a process killed inside an alias move left behind; returns what it
        did. aliases.json is the truth: the `production` link is re-pointed at it (a kill
        between the alias write and the link, with the history line the kill lost), and
        temporary alias files that never replaced aliases.json are removed."""
        if not self.root.exists():
            return []
        done = []
        with self.lock():  # alias writes happen only under this lock: leftovers are dead
            for leftover in self.root.glob(".aliases.json.*"):
                leftover.unlink(missing_ok=True)
                done.append(f"removed {leftover.name}, an alias write that never completed")
            current = self.resolve("production")
            link = self.root / "production"
            target = os.readlink(link) if link.is_symlink() else None
            if current and target != str(Path("versions") / current):
                self._link_production(current)
                before = Path(target).name if target else None
                self._record({"production": before}, {"production": current},
                             "recovered: the move was interrupted before the production link and history")
                done.append(f"production link {before} -> {current}")
        return done

    def find_unpromoted(self, candidate_dir: Path, metadata: dict) -> str | None:
        """A version that already holds this candidate's exact weights for the same batch
        and parent but never became production: a run killed between registering and
        moving the alias. Its rerun promotes that version instead of registering a twin."""
        sha = weights_sha256(candidate_dir)
        moved_to = {h["to"] for h in self.history() if h["alias"] == "production"} | {self.resolve("production")}
        for version in reversed(self.versions()):
            meta = self.metadata(version)
            if (meta.get("weights_sha256") == sha and meta.get("batch_id") == metadata.get("batch_id")
                    and meta.get("parent") == metadata.get("parent") and version not in moved_to
                    and not self.verify(version)):
                return version
        return None

    def _link_production(self, version: str) -> None:
        link = self.root / "production"
        tmp = self.root / ".production.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(Path("versions") / version, tmp)
        os.replace(tmp, link)


def weights_sha256(model_dir: Path) -> str:
    """Content hash of what a model predicts with: its weights file, and its class
    statistics when it has them (`train.stats_head`: every such version shares the frozen
    encoder, so the weights alone would not tell two apart). Equal hashes mean bitwise-
    equal predictors; a version without statistics keeps the weights file's own hash."""
    stats = Path(model_dir) / STATS_FILE
    return _predictor_sha(sha256_file(Path(model_dir) / WEIGHTS_FILE), sha256_file(stats) if stats.exists() else None)


def _predictor_sha(weights: str, stats: str | None) -> str:
    return weights if stats is None else hashlib.sha256(f"{weights}:{stats}".encode()).hexdigest()


def lineage_entry(metadata: dict) -> dict:
    """One row of a version's lineage, as the model card and `ratchet status` show it."""
    overall = (metadata.get("metrics") or {}).get("overall") or {}
    overall = overall if isinstance(overall, dict) else {}
    metric = score_metric(metadata)
    return {"version": metadata.get("version"), "batch_id": metadata.get("batch_id"),
            "source": metadata.get("source"), "created_at": metadata.get("created_at"),
            "metric": metric, "score": overall.get(metric), "accuracy": overall.get("accuracy")}


def score_metric(metadata: dict) -> str:
    """The name of a version's headline score: recorded at promotion by its task type
    (accuracy for a classifier, f1 for a tagger)."""
    if metadata.get("metric"):
        return metadata["metric"]
    return "f1" if metadata.get("task") == "ner" else "accuracy"  # versions stored before it was recorded


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def register_and_promote(registry: Registry, candidate_dir: Path, metadata: dict,
                         reason: str = "gate passed", *, works) -> str:
    """Register a candidate, prove the stored copy is intact, loads and predicts (`works`:
    the task type's smoke test), then move production to it. A version that fails any of
    these is never pointed at; a version a killed run registered is promoted, not copied."""
    orphan = registry.find_unpromoted(Path(candidate_dir), metadata)
    if orphan:
        reason += f" (completing the promotion of {orphan}, interrupted after it was registered)"
    version = orphan or registry.register(Path(candidate_dir), metadata)
    broken = works(registry.checked_path(version))
    if broken:
        raise RegistryError(f"registry: {version} does not load into {broken}")
    registry.promote(version, reason)
    return version
