"""Integrity: content hashes of a registry version's files, and the check that they still hold.

Versions are immutable by contract, but disks, copies and people are not: a flipped byte
in model.safetensors still loads and quietly predicts garbage. The registry records the
SHA-256 and size of every file when a version is written; `check` recomputes them before
production moves to a version and whenever `ratchet status` asks. Pure functions over a
directory, so the registry, the CLI and audits share one definition of "intact".
"""

from __future__ import annotations

import hashlib
from pathlib import Path

METADATA_FILE = "metadata.json"  # holds the manifest, so it cannot be in it
WEIGHTS_FILE = "model.safetensors"


def sha256_file(path: Path) -> str:
    """Streaming SHA-256, so multi-gigabyte weights never sit in memory at once."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _files(root: Path) -> list[str]:
    """Relative POSIX paths of every file under `root` except the metadata itself."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.relative_to(root).as_posix() != METADATA_FILE)


def manifest(root: Path) -> tuple[dict[str, str], dict[str, int]]:
    """({relative path: sha256}, {relative path: bytes}) of a version directory. Sizes are
    kept next to the hashes so a check can say "truncated" rather than just "differs"."""
    root = Path(root)
    names = _files(root)
    return ({n: sha256_file(root / n) for n in names}, {n: (root / n).stat().st_size for n in names})


def _check_one(root: Path, name: str, expected_sha: str, expected_size: int | None) -> str | None:
    path = root / name
    if not path.is_file():
        return f"missing file: {name}"
    size = path.stat().st_size
    if expected_size is not None and size < expected_size:
        return f"truncated: {name} ({size} of {expected_size} bytes)"
    if sha256_file(path) != expected_sha:
        return f"hash mismatch: {name} (sha256 differs from the one recorded at registration)"
    return None


def check(root: Path, files: dict[str, str], sizes: dict[str, int] | None = None) -> list[str]:
    """Problems with a version directory against its manifest; empty when intact.
    A file that was added later is a problem too: it could change what loads."""
    root, sizes = Path(root), sizes or {}
    problems = [p for name in sorted(files) if (p := _check_one(root, name, files[name], sizes.get(name)))]
    problems += [f"unexpected file: {name} (not recorded at registration)" for name in _files(root) if name not in files]
    return problems


def check_weights(root: Path, weights_sha: str | None) -> list[str]:
    """The check for versions written before manifests existed: only the weights hash,
    and only when it was recorded."""
    if weights_sha is None:
        return []
    path = Path(root) / WEIGHTS_FILE
    if not path.is_file():
        return [f"missing file: {WEIGHTS_FILE}"]
    if sha256_file(path) != weights_sha:
        return [f"hash mismatch: {WEIGHTS_FILE} (sha256 differs from weights_sha256 in metadata.json)"]
    return []
