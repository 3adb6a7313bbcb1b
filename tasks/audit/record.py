"""Audit trail: what a registry version records so its promotion can be rebuilt and verified.

Before a candidate is registered, the flow records data/ and the registry as it stands
(the parent's weights) with `dvc add`, and the version's metadata names both DVC hashes,
the git revision of the code (and whether the working tree was dirty) and the effective
parameters. After the promotion it records the registry again (models/versions.dvc),
writes the audit/ metrics and plots `dvc metrics diff` / `dvc plots diff` compare, and,
with `audit.git_commit: true`, commits all of it and tags the commit the way GTO (DVC's
model registry) reads tags: `model@v0.0.7` for registry version v0007 and
`model#production#N` for each production assignment. With a default DVC remote the
recorded data and models are pushed. `ratchet audit` (tasks/audit/audit_run.py) replays them.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from tasks.core.config import Params, params_hash
from tasks.registry.matrix import extend
from tasks.registry.store import Registry, score_metric
from tasks.core.workspace import Workspace

ARTIFACT = "model"          # the GTO artifact name in tags
PRODUCTION_STAGE = "production"
AUDIT_DIR = "audit"         # git-tracked metrics and plots of the current production version
MODELS_DVC = "models/versions.dvc"


class AuditError(RuntimeError):
    """A promotion could not be recorded (git or DVC refused), or an audit could not run."""


def git(root: Path, *args: str, check: bool = True) -> str:
    """Run git in `root`; the output, stripped. Without a configured identity (a bare CI
    box, a fresh container) commits are made as ratchet@localhost."""
    identity = []
    if subprocess.run(["git", "config", "user.email"], cwd=root, capture_output=True).returncode != 0:
        identity = ["-c", "user.name=ratchet", "-c", "user.email=ratchet@localhost"]
    done = subprocess.run(["git", *identity, *args], cwd=root, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AuditError(f"git {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()


def git_rev(root: Path) -> str | None:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def git_dirty(root: Path) -> bool | None:
    """Whether tracked code or params differ from HEAD (then HEAD alone cannot rebuild it)."""
    done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                          capture_output=True, text=True)
    if done.returncode != 0:
        return None
    recorded = {"data.dvc", MODELS_DVC, "models/.gitignore", "dvc.lock"}  # the flow's own writes
    return any(line[3:].strip() not in recorded and not line[3:].startswith(AUDIT_DIR + "/")
               for line in done.stdout.splitlines())


def is_dvc_repo(root: Path) -> bool:
    return (root / ".dvc").is_dir()


def dvc_add(root: Path, path: Path) -> str | None:
    """`dvc add PATH`; the directory's DVC hash (`<md5>.dir`), None when there is nothing to add."""
    if not is_dvc_repo(root) or not path.exists():
        return None
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        (stage,) = repo.add(str(path))
        return stage.outs[0].hash_info.value


def record_data(ws: Workspace) -> dict:
    """Record data/ and the registry before a candidate joins it: the hashes that pin the
    batch, the exam and the parent's weights. Empty when the workspace is not DVC."""
    if not is_dvc_repo(ws.root):
        return {}
    return {"dvc_data_hash": dvc_add(ws.root, ws.data_dir),
            "dvc_models_hash": dvc_add(ws.root, ws.models_dir / "versions")}


def version_metadata(params: Params, *, parent: str | None, lineage: list[str], batch_id: str, source: str,
                     metrics: dict, gate: dict, train: dict, run_id: str, root: Path = Path("."),
                     data_hash: str | dict | None = None) -> dict:
    """The lineage record stored as metadata.json with a registry version. `data_hash`
    is what `record_data` returned (or a bare data hash, as older callers pass)."""
    dvc = data_hash if isinstance(data_hash, dict) else {"dvc_data_hash": data_hash}
    return {
        "parent": parent, "batch_ids": [*(b for b in lineage if b != batch_id), batch_id], "batch_id": batch_id, "source": source,
        "params_hash": params_hash(params), "params": params.to_dict(), "git_rev": git_rev(root),
        "git_dirty": git_dirty(root), "dvc_data_hash": dvc.get("dvc_data_hash"),
        "dvc_models_hash": dvc.get("dvc_models_hash"),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "run_id": run_id, "metrics": metrics, "gate": gate, "train": train,
    }


def promotion_metadata(params: Params, kind, *, parent_meta: dict, champion_scores: dict | None,
                       **version: object) -> dict:
    """`version_metadata` for a promotion of task type `kind`, with its task, metric and the
    lineage's accuracy/F1 matrix grown by one row (tasks/registry/matrix.py). The flow and
    the DVC promote stage both build a version's record here."""
    meta = version_metadata(params, **version) | {"task": kind.name, "metric": kind.metric,
                                                  "pipeline_tag": kind.pipeline_tag}
    meta["accuracy_matrix"] = extend(
        parent_meta.get("accuracy_matrix"), parent_version=version["parent"], batch_id=meta["batch_id"],
        batch_ids=meta["batch_ids"], candidate=version["metrics"],
        champion=champion_scores if version["parent"] else None, metric=kind.metric)
    return meta


def semver(version: str) -> str:
    """Registry version v0007 as the SemVer GTO requires: v0.0.7."""
    return f"v0.0.{int(version.lstrip('v'))}"


def version_tag(version: str) -> str:
    return f"{ARTIFACT}@{semver(version)}"


def next_stage_tag(root: Path, stage: str = PRODUCTION_STAGE) -> str:
    """GTO's incremental stage-assignment tag: `model#production#N`, N one past the last."""
    prefix = f"{ARTIFACT}#{stage}#"
    numbers = [int(t[len(prefix):]) for t in git(root, "tag", "--list", f"{prefix}*").splitlines()
               if t[len(prefix):].isdigit()]
    return f"{prefix}{max(numbers, default=0) + 1}"


def score_key(meta: dict) -> str:
    """A version's headline score: accuracy for a text classifier, entity micro F1 for a tagger."""
    return score_metric(meta)


def audit_frames(reg: Registry, version: str) -> dict[str, pd.DataFrame]:
    """The plot tables for `version`: its per-slice score, the score matrix of its lineage
    (each version on each slice it was examined on) and its training loss. The `score`
    column is accuracy, or entity F1 for a tagger (task.type: ner): one plot definition
    in dvc.yaml serves every task type."""
    meta = reg.metadata(version)
    key = score_key(meta)
    lineage = [e["version"] for e in reversed(reg.lineage(version))]
    matrix = [{"version": v, "slice": s, "score": m[key]} for v in lineage
              for s, m in reg.metadata(v)["metrics"]["slices"].items()]
    slices = [{"slice": s, "score": m[key]} for s, m in meta["metrics"]["slices"].items()]
    losses = (meta.get("train") or {}).get("losses") or []
    return {"slices": pd.DataFrame(slices, columns=["slice", "score"]),
            "matrix": pd.DataFrame(matrix, columns=["version", "slice", "score"]),
            "loss": pd.DataFrame({"step": range(1, len(losses) + 1), "loss": losses})}


def audit_metrics(meta: dict) -> dict:
    train = meta.get("train") or {}
    losses = train.get("losses") or []
    key = score_key(meta)
    return {"version": meta["version"], f"overall_{key}": meta["metrics"]["overall"][key],
            "slices": {s: m[key] for s, m in meta["metrics"]["slices"].items()},
            "gate_promote": bool(meta["gate"]["promote"]), "train_steps": train.get("steps"),
            "final_loss": losses[-1] if losses else None}


def write_audit_files(reg: Registry, version: str, root: Path) -> list[Path]:
    """audit/metrics.json and the plot CSVs for `version` (what dvc metrics/plots read)."""
    out = root / AUDIT_DIR
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, frame in audit_frames(reg, version).items():
        frame.to_csv(out / f"{name}.csv", index=False)
        paths.append(out / f"{name}.csv")
    (out / "metrics.json").write_text(json.dumps(audit_metrics(reg.metadata(version)), indent=2, sort_keys=True) + "\n")
    return [*paths, out / "metrics.json"]


@dataclass
class Recording:
    """What recording one promotion did."""

    version: str
    models_hash: str | None = None
    commit: str | None = None
    tags: list[str] = field(default_factory=list)
    pushed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def default_remote(root: Path) -> str | None:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return repo.config["core"].get("remote")


def record_promotion(ws: Workspace, params: Params, reg: Registry, version: str) -> Recording:
    """After `version` became production: record the registry in DVC, write audit/, then
    (audit.git_commit) commit and tag, and push to the default DVC remote if there is one."""
    rec = Recording(version)
    if not is_dvc_repo(ws.root):
        return rec
    rec.models_hash = dvc_add(ws.root, reg.versions_dir)
    audit_paths = write_audit_files(reg, version, ws.root)
    if params.audit.git_commit:
        rec.commit, rec.tags = commit_and_tag(ws.root, reg, version, audit_paths)
    if default_remote(ws.root):
        from dvc.repo import Repo

        targets = [str(ws.root / "data.dvc"), str(ws.root / MODELS_DVC)]
        with Repo(str(ws.root)) as repo:
            repo.push(targets=targets)
        rec.pushed = ["data.dvc", MODELS_DVC]
    return rec


def commit_and_tag(root: Path, reg: Registry, version: str, audit_paths: list[Path]) -> tuple[str, list[str]]:
    """One commit with what DVC recorded for `version`, tagged GTO-style (annotated)."""
    meta = reg.metadata(version)
    candidates = ["data.dvc", MODELS_DVC, "models/.gitignore", "dvc.lock",
                  *(str(p.relative_to(root)) for p in audit_paths)]
    paths = [p for p in candidates if (root / p).exists()]
    git(root, "add", "--", *paths)
    message = (f"ratchet: promote {version} (batch {meta['batch_id']}, parent {meta.get('parent') or 'base'})\n\n"
               f"weights sha256 {meta['weights_sha256']}\ndata {meta.get('dvc_data_hash')}\n"
               f"code {meta.get('git_rev')}{' (dirty)' if meta.get('git_dirty') else ''}")
    git(root, "commit", "-q", "-m", message, "--", *paths)
    commit = git(root, "rev-parse", "HEAD")
    tags = [version_tag(version), next_stage_tag(root)]
    git(root, "tag", "-a", tags[0], "-m", f"Registering {ARTIFACT} {version} ({semver(version)})\n\n{message}")
    git(root, "tag", "-a", tags[1], "-m", f"Assigning stage {PRODUCTION_STAGE} to {ARTIFACT} {semver(version)}")
    return commit, tags
