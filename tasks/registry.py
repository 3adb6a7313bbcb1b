"""Registry: immutable model versions and the aliases that point at them.

models/
  versions/v0001/   save_pretrained safetensors, tokenizer, label_map.json,
                    replay.parquet + replay.json, metadata.json (lineage, metrics, gate)
  aliases.json      {"production": "v0002", "previous": "v0001"}  (the only mutable file)
  production        symlink to versions/<production version>, for tools that want a path

A version appears by renaming a fully written temporary directory, and an alias moves
by one `os.replace` of aliases.json, so a crash at any moment leaves production pointing
at a complete version. Rollback is moving the alias back.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path


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

    def register(self, candidate_dir: Path, metadata: dict) -> str:
        """Copy a candidate in as the next immutable version; returns its name."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        existing = self.versions()
        version = f"v{int(existing[-1][1:]) + 1 if existing else 1:04d}"
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.versions_dir))
        try:
            shutil.copytree(candidate_dir, staging, dirs_exist_ok=True)
            metadata = {**metadata, "version": version, "weights_sha256": weights_sha256(staging)}
            (staging / "metadata.json").write_text(json.dumps(metadata, indent=2, default=str))
            os.rename(staging, self.versions_dir / version)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return version

    def find_weights(self, sha256: str) -> str | None:
        """The version whose weights hash to `sha256`, if any (audits use this)."""
        for version in self.versions():
            if self.metadata(version).get("weights_sha256") == sha256:
                return version
        return None

    def set_alias(self, alias: str, version: str) -> None:
        """Point `alias` at `version` with one atomic replace of aliases.json."""
        self._move({alias: version})

    def promote(self, version: str) -> None:
        """Make `version` production; the old production becomes `previous` (one write)."""
        current = self.resolve("production")
        moves = {"production": version}
        if current and current != version:
            moves["previous"] = current
        self._move(moves)

    def _move(self, moves: dict[str, str]) -> None:
        for version in moves.values():
            self.path(version)  # never point at a missing version
        aliases = {**self.aliases(), **moves}
        _atomic_write(self.aliases_path, json.dumps(aliases, indent=2, sort_keys=True))
        if "production" in moves:
            self._link_production(moves["production"])

    def _link_production(self, version: str) -> None:
        link = self.root / "production"
        tmp = self.root / ".production.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(Path("versions") / version, tmp)
        os.replace(tmp, link)


def weights_sha256(model_dir: Path) -> str:
    """Content hash of a model's weights file: equal hashes mean bitwise-equal weights."""
    digest = hashlib.sha256()
    with open(Path(model_dir) / "model.safetensors", "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def register_and_promote(registry: Registry, candidate_dir: Path, metadata: dict) -> str:
    """Register a candidate, prove the stored copy loads and predicts, then move
    production to it. A version that fails to load is never pointed at."""
    from tasks.model import load_classifier

    version = registry.register(Path(candidate_dir), metadata)
    clf = load_classifier(registry.path(version))
    probe = clf.tokenizer(["ratchet smoke test"], return_tensors="pt")
    if clf.model(**probe).logits.shape[-1] != len(clf.labels):
        raise RegistryError(f"registry: {version} does not load into a working classifier")
    registry.promote(version)
    return version


# --- Prefect edge ------------------------------------------------------------------
from prefect import task  # noqa: E402


@task(name="promote", retries=2, retry_delay_seconds=[1, 5])
def promote_task(registry: Registry, candidate_dir: Path, metadata: dict) -> str:
    return register_and_promote(registry, candidate_dir, metadata)


def main() -> None:
    """dvc stage `promote`: register the audited candidate unless its exact weights are
    already a version (then the audit reproduced it); move production only when the
    gate passed and the parent is still production."""
    from tasks import pipeline

    p = pipeline.params()
    reg = Registry(pipeline.workspace().models_dir)
    candidate = pipeline.BUILD / "finetune" / "candidate"
    decision = pipeline.read_json(pipeline.BUILD / "gate" / "decision.json")
    sha = weights_sha256(candidate)
    record = {"weights_sha256": sha, "gate_promote": decision["promote"], "parent": pipeline.parent(p)}
    existing = reg.find_weights(sha)
    if existing:
        record |= {"status": "reproduced", "version": existing}
    elif not decision["promote"]:
        record |= {"status": "rejected", "version": None}
    else:
        from tasks.audit import version_metadata

        scores = pipeline.read_json(pipeline.BUILD / "evaluate" / "scores.json")
        meta = version_metadata(p, parent=record["parent"], lineage=pipeline.lineage(p), batch_id=pipeline.batch_id(),
                                source=p.audit.batch, metrics=scores["candidate"]["all"], gate=decision,
                                train=pipeline.read_json(pipeline.BUILD / "finetune" / "metrics.json"), run_id="dvc")
        if record["parent"] == reg.resolve("production"):
            record |= {"status": "promoted", "version": register_and_promote(reg, candidate, meta)}
        else:
            record |= {"status": "registered", "version": reg.register(candidate, meta)}
    pipeline.write_json(pipeline.stage_dir("promote") / "promotion.json", record)


if __name__ == "__main__":
    main()
