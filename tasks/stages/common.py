"""Pipeline I/O for dvc.yaml: where each stage reads and writes when run by `dvc repro`.

The Prefect flow passes objects between stages in memory; `dvc repro` runs each stage
as `python -m tasks.stages.<stage>` and passes them through files under build/<stage>/.
Both call the same stage functions and the same task-type plug-in (`task.type`), so a
promotion made by the flow, of any task type, can be rebuilt here and compared. Which batch and which parent version are replayed is `audit` in
params.yaml; registry versions are immutable, so the parent's name pins its content.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from tasks.core.config import ConfigError, Params, load_params
from tasks.core.workspace import Workspace
from tasks.kinds import TaskKind, get_kind
from tasks.registry.store import Registry

BUILD = Path("build")


def stage_dir(name: str) -> Path:
    path = BUILD / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def params() -> Params:
    try:
        return load_params("params.yaml")
    except ConfigError as exc:
        sys.exit(f"error: {exc}")


def workspace() -> Workspace:
    return Workspace.at(".")


def parent(p: Params) -> str | None:
    """The audit's parent version, checked to exist; None for the base model."""
    if p.audit.parent in ("", "none", "null"):
        return None
    Registry(workspace().models_dir).path(p.audit.parent)
    return p.audit.parent


def parent_dir(p: Params) -> Path | None:
    version = parent(p)
    return Registry(workspace().models_dir).path(version) if version else None


def lineage(p: Params) -> list[str]:
    version = parent(p)
    return Registry(workspace().models_dir).metadata(version)["batch_ids"] if version else []


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def write_json(path: Path, payload: dict) -> None:
    Path(path).write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def split_frames() -> dict[str, pd.DataFrame]:
    out = BUILD / "validate"
    return {name: pd.read_parquet(out / f"{name}.parquet") for name in ("train", "dev", "test")}


def batch_id() -> str:
    return read_json(BUILD / "intake" / "batch.json")["batch_id"]


def kind(p: Params) -> TaskKind:
    return get_kind(p.task.type)


def registry() -> Registry:
    return Registry(workspace().models_dir)
