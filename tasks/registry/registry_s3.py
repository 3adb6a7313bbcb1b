"""Registry mirror on S3: the promote stage's copy of the local registry at s3://bucket/prefix,
from which a fresh machine can restore production.

s3://bucket/prefix/
  versions/v0003/<every file>     uploaded first (multipart above 8 MiB, tasks/core/storage.py)
  versions/v0003/manifest.json    written last: every file's SHA-256 and size. A version
                                  without it is invisible, and a retry completes it
  versions/v0003/.claim.json      written first, If-None-Match: which content owns the name,
                                  so two writers never interleave files under one version
  aliases.json                    moved only after the manifest, by a conditional write
                                  (If-Match its ETag; If-None-Match for the first)
  history/<time>-<id>.json        one object per remote alias move (S3 has no append)

A crash at any point leaves the remote production on a complete version. Two promotions
never lose one: locally the registry's lock orders them, and the remote alias write is
conditional, so a writer that read a stale aliases.json is refused, re-reads and applies
its move on top (the other's version becomes `previous`). Endpoint and credentials come
from the standard AWS settings, or `registry.endpoint_url` in params.yaml.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from tasks.registry.integrity import METADATA_FILE, check, manifest, sha256_file
from tasks.registry.store import Registry, RegistryError
from tasks.core.storage import Conflict, StorageError, download_file, head, list_objects, put_bytes, read_bytes, upload_file

MANIFEST_FILE = "manifest.json"
CLAIM_FILE = ".claim.json"
ATTEMPTS = 8


class MirrorError(RegistryError):
    """The mirror cannot be written or read as asked; the message says what to do."""


@dataclass(frozen=True)
class Mirror:
    uri: str                       # s3://bucket/prefix
    endpoint_url: str | None = None

    @classmethod
    def from_config(cls, cfg) -> "Mirror | None":
        """The mirror named by params.yaml's `registry` section, or None when unset."""
        return cls(cfg.mirror.rstrip("/"), cfg.endpoint_url or None) if cfg.mirror else None

    def at(self, *parts: str) -> str:
        return "/".join([self.uri.rstrip("/"), *parts])

    def read_json(self, uri: str) -> dict | None:
        """A JSON object on the mirror, or None when it does not exist."""
        try:
            return json.loads(read_bytes(uri, endpoint_url=self.endpoint_url))
        except StorageError:
            if head(uri, endpoint_url=self.endpoint_url) is None:
                return None
            raise

    def manifest(self, version: str) -> dict | None:
        """The version's manifest: None while the version is absent or half-written."""
        return self.read_json(self.at("versions", version, MANIFEST_FILE))

    def versions(self) -> list[str]:
        """Complete versions only (those with a manifest), oldest first."""
        objects = list_objects(self.at("versions") + "/", endpoint_url=self.endpoint_url)
        names = {o.uri.split("/")[-2] for o in objects if o.uri.endswith("/" + MANIFEST_FILE)}
        return sorted(names, key=lambda name: int(name[1:]) if name[1:].isdigit() else 0)

    def aliases(self) -> tuple[dict[str, str], str | None]:
        """(aliases, ETag) of the remote aliases.json; ({}, None) when there is none yet."""
        uri = self.at("aliases.json")
        for _ in range(ATTEMPTS):  # an object replaced between HEAD and GET: look again
            found = head(uri, endpoint_url=self.endpoint_url)
            if found is None:
                return {}, None
            data = self.read_json(uri)
            if data is not None and head(uri, endpoint_url=self.endpoint_url) == found:
                return data, found.etag
        raise MirrorError(f"mirror: {uri} keeps changing; try again")

    def history(self) -> list[dict]:
        """Every remote alias move, oldest first."""
        objects = list_objects(self.at("history") + "/", endpoint_url=self.endpoint_url)
        return [json.loads(read_bytes(o.uri, endpoint_url=self.endpoint_url))
                for o in sorted(objects, key=lambda o: o.uri)]


def _content_id(root: Path) -> str:
    """metadata.json holds every other file's hash, so its hash names the whole version."""
    return sha256_file(root / METADATA_FILE)


def _claim(mirror: Mirror, version: str, content: str) -> None:
    """Own the version name on the mirror before uploading anything under it."""
    uri = mirror.at("versions", version, CLAIM_FILE)
    try:
        put_bytes(uri, json.dumps({"metadata_sha256": content}).encode(), if_none_match=True,
                  endpoint_url=mirror.endpoint_url)
    except Conflict:
        owner = (mirror.read_json(uri) or {}).get("metadata_sha256")
        if owner != content:  # not our own earlier, interrupted attempt
            raise MirrorError(f"mirror: {mirror.at('versions', version)} is claimed by a different version "
                              "(another registry writes to this mirror); pull it or use another prefix") from None


def push_version(reg: Registry, mirror: Mirror, version: str) -> dict:
    """Upload every file of a local version, then its manifest; returns the manifest.
    Idempotent: a complete remote copy is left alone, a half-written one is completed."""
    root = reg.checked_path(version)  # never publish bytes that differ from the judged ones
    content = _content_id(root)
    done = mirror.manifest(version)
    if done:
        if done["metadata_sha256"] != content:
            raise MirrorError(f"mirror: {version} on {mirror.uri} is a different model than the local {version}")
        return done
    _claim(mirror, version, content)
    meta = reg.metadata(version)
    files, sizes = (meta["files"], meta["file_sizes"]) if "files" in meta else manifest(root)
    files, sizes = {**files, METADATA_FILE: content}, {**sizes, METADATA_FILE: (root / METADATA_FILE).stat().st_size}
    for name in sorted(files):
        upload_file(root / name, mirror.at("versions", version, name), endpoint_url=mirror.endpoint_url)
    present = {o.uri: o.size for o in list_objects(mirror.at("versions", version) + "/",
                                                   endpoint_url=mirror.endpoint_url)}
    missing = [n for n in files if present.get(mirror.at("versions", version, n)) != sizes[n]]
    if missing:
        raise MirrorError(f"mirror: {version} upload incomplete ({', '.join(missing)}); retry the push")
    record = {"version": version, "metadata_sha256": content, "files": dict(sorted(files.items())),
              "sizes": dict(sorted(sizes.items())), "parent": meta.get("parent"),
              "created_at": meta.get("created_at")}
    try:
        put_bytes(mirror.at("versions", version, MANIFEST_FILE), json.dumps(record, indent=2).encode(),
                  if_none_match=True, endpoint_url=mirror.endpoint_url)
    except Conflict:  # a concurrent push of the same content finished first
        if (mirror.manifest(version) or {}).get("metadata_sha256") != content:
            raise MirrorError(f"mirror: {version} was completed by another writer with other content") from None
    return record


def move_production(mirror: Mirror, version: str, reason: str | None = None) -> dict[str, str]:
    """Point the remote `production` at a complete version (the old one becomes `previous`)
    with a conditional write; on a lost race re-read and apply the move on top. Returns the
    moves made ({} when production already was `version`)."""
    if mirror.manifest(version) is None:
        raise MirrorError(f"mirror: {version} is not complete on {mirror.uri}; push it first")
    for _ in range(ATTEMPTS):
        aliases, etag = mirror.aliases()
        current = aliases.get("production")
        if current == version:
            return {}
        moves = {"production": version, **({"previous": current} if current else {})}
        body = json.dumps({**aliases, **moves}, indent=2, sort_keys=True).encode()
        try:
            put_bytes(mirror.at("aliases.json"), body, if_match=etag, if_none_match=etag is None,
                      endpoint_url=mirror.endpoint_url)
        except Conflict:
            continue  # someone moved it since we read it: re-read, never overwrite blindly
        _record(mirror, aliases, moves, reason)
        return moves
    raise MirrorError(f"mirror: aliases.json on {mirror.uri} changed {ATTEMPTS} times while moving it; try again")


def _record(mirror: Mirror, before: dict[str, str], moves: dict[str, str], reason: str | None) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    entry = {"time": now.isoformat(timespec="seconds"), "moves": [
        {"alias": a, "from": before.get(a), "to": v} for a, v in sorted(moves.items())],
        "reason": reason, "who": os.environ.get("USER") or "unknown"}
    name = f"{now.strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}.json"
    put_bytes(mirror.at("history", name), json.dumps(entry).encode(), endpoint_url=mirror.endpoint_url)


def publish(reg: Registry, mirror: Mirror, version: str | None = None, reason: str | None = None) -> dict:
    """Push a version (default: local production) and, when it is still the local
    production, move the remote production to it. Holding the local lock while moving keeps
    the remote order of same-machine promotions equal to the local order. Safe to rerun:
    this is the retry after any crash or outage."""
    version = version or reg.resolve("production")
    if not version:
        raise MirrorError("mirror: no local production version to publish")
    push_version(reg, mirror, version)
    with reg.lock():
        local = reg.resolve("production")
        moves = move_production(mirror, version, reason) if local == version else {}
    return {"mirror": mirror.uri, "version": version, "pushed": True, "moves": moves,
            "production": mirror.aliases()[0].get("production")}


def pull(mirror: Mirror, reg: Registry, version: str | None = None, promote: bool = True) -> str:
    """Restore a version (default: the remote production) into a local registry, checking
    every file against the manifest before it appears; with `promote`, make it the local
    production. A fresh machine runs this and loads models/production."""
    version = version or mirror.aliases()[0].get("production")
    if not version:
        raise MirrorError(f"mirror: {mirror.uri} has no production version")
    record = mirror.manifest(version)
    if record is None:
        raise MirrorError(f"mirror: {version} is not (completely) on {mirror.uri}")
    if (reg.versions_dir / version / METADATA_FILE).exists():
        if _content_id(reg.versions_dir / version) != record["metadata_sha256"]:
            raise MirrorError(f"mirror: local {version} differs from {version} on {mirror.uri}")
    else:
        _download(mirror, reg, version, record)
    if promote:
        reg.promote(version, reason=f"pulled from {mirror.uri}")
    return version


def _download(mirror: Mirror, reg: Registry, version: str, record: dict) -> None:
    reg.versions_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=reg.versions_dir))
    try:
        for name in sorted(record["files"]):
            download_file(mirror.at("versions", version, name), staging / name, endpoint_url=mirror.endpoint_url)
        problems = check(staging, record["files"], record["sizes"])  # the manifest, metadata.json included
        meta = json.loads((staging / METADATA_FILE).read_text()) if not problems else {}
        if not problems and meta.get("version") != version:
            problems = [f"metadata.json names {meta.get('version')}, not {version}"]
        if not problems and "files" in meta:  # and what the local registry will verify it against
            problems = check(staging, meta["files"], meta.get("file_sizes"))
        if problems:
            raise MirrorError(f"mirror: {version} on {mirror.uri} failed its integrity check, nothing restored: "
                              + "; ".join(problems))
        with reg.lock():
            if (reg.versions_dir / version).exists():
                raise MirrorError(f"mirror: a local {version} appeared while pulling; pull again")
            os.rename(staging, reg.versions_dir / version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
