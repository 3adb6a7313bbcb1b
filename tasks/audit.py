"""Audit trail: what a registry version records so its promotion can be rebuilt.

Each version's metadata names its parent, every batch in its lineage, the effective
parameters and their hash, the git revision of the code and the DVC hash of data/.
After a promotion the flow records data/ in data.dvc (when the workspace is a DVC
repository), and `dvc repro` with `audit.batch`/`audit.parent` rebuilds the candidate.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

from tasks.config import Params, params_hash
from tasks.workspace import Workspace


def git_rev(root: Path) -> str | None:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def record_data(ws: Workspace) -> str | None:
    """`dvc add data` in a DVC workspace; returns the new data hash (None when not DVC)."""
    if not (ws.root / ".dvc").is_dir() or not ws.data_dir.exists():
        return None
    from dvc.repo import Repo

    with Repo(str(ws.root)) as repo:
        (stage,) = repo.add(str(ws.data_dir))
        return stage.outs[0].hash_info.value


def version_metadata(params: Params, *, parent: str | None, lineage: list[str], batch_id: str, source: str,
                     metrics: dict, gate: dict, train: dict, run_id: str, root: Path = Path("."),
                     data_hash: str | None = None) -> dict:
    """The lineage record stored as metadata.json with a registry version."""
    return {
        "parent": parent, "batch_ids": [*(b for b in lineage if b != batch_id), batch_id], "batch_id": batch_id, "source": source,
        "params_hash": params_hash(params), "params": params.to_dict(), "git_rev": git_rev(root),
        "dvc_data_hash": data_hash, "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "run_id": run_id, "metrics": metrics, "gate": gate, "train": train,
    }
