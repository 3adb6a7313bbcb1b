"""Export to an MLflow model registry: each promoted version becomes a version of one
registered model, and the `champion` alias follows production (rollback included).

Optional (`registry.mlflow_uri` in params.yaml, the `mlflow` extra). What each MLflow
version holds: the model logged with `mlflow.transformers` as the version's pipeline
(`text-classification` or `token-classification`, loadable as
`models:/<name>@champion`) — or, for a class-statistics version, whose pipeline is not
its predictor, a pyfunc that answers through Ratchet's loader with the same `label` and
`score` columns (tasks/registry/mlflow_pyfunc.py) — its exam metrics (overall, and per slice as
`slice.<name>.<metric>`), the gate table, metadata.json and the model card as artifacts,
and the lineage as tags (`ratchet.version`, `ratchet.parent`, `ratchet.lineage`,
`ratchet.batch_id`, `ratchet.weights_sha256`, `ratchet.task`).

`sync` is idempotent: a Ratchet version already exported (found by the `ratchet.version`
tag of the run behind each MLflow version, so a crash between logging and tagging does
not log it twice) is not logged again, and the alias is only set. MLflow being down
never blocks a promotion: the flow reports the error (`details.mlflow`) and
`ratchet models mlflow-sync` completes it later, like the S3 mirror.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from tasks.registry.store import Registry
from tasks.train.stats_head import has_stats

CHAMPION = "champion"
TAG = "ratchet.version"


@dataclass(frozen=True)
class MlflowTarget:
    uri: str                      # tracking and registry URI (sqlite:///…, http://…)
    model: str                    # the registered model's name
    artifacts: str | None = None  # the experiment's artifact location (None: the server's default)
    experiment: str = "ratchet"

    @classmethod
    def from_config(cls, cfg, root: Path) -> "MlflowTarget | None":
        """The target params.yaml's `registry` section names, or None when unset. A relative
        SQLite path is relative to the workspace, and its artifacts go beside it."""
        if not cfg.mlflow_uri:
            return None
        uri, artifacts = cfg.mlflow_uri, cfg.mlflow_artifacts or None
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            uri = f"sqlite:///{(root / uri[len('sqlite:///'):]).resolve()}"
        if uri.startswith("sqlite:///") and artifacts is None:
            artifacts = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
        return cls(uri, cfg.mlflow_model, artifacts)


def _client(target: MlflowTarget):
    # a down server fails in seconds, not after MLflow's default minutes of retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(target.uri)
    mlflow.set_registry_uri(target.uri)
    return mlflow, MlflowClient(tracking_uri=target.uri, registry_uri=target.uri)


def exported(client, target: MlflowTarget) -> dict[str, str]:
    """{Ratchet version: MLflow version} of what the registered model already holds."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name='{target.model}'")
    except MlflowException:
        return {}
    out = {}
    for mv in found:
        ours = mv.tags.get(TAG) or (client.get_run(mv.run_id).data.tags.get(TAG) if mv.run_id else None)
        if ours and (ours not in out or int(mv.version) < int(out[ours])):
            out[ours] = str(mv.version)
    return out


def _metrics(metadata: dict) -> dict[str, float]:
    name = lambda text: re.sub(r"[^A-Za-z0-9_\-. /]", "_", str(text))  # noqa: E731  MLflow's metric names
    sheet = metadata.get("metrics") or {}
    out = {name(k): float(v) for k, v in (sheet.get("overall") or {}).items() if isinstance(v, (int, float))}
    for slice_name, scores in (sheet.get("slices") or {}).items():
        for k, v in (scores or {}).items():
            if isinstance(v, (int, float)):
                out[f"slice.{name(slice_name)}.{name(k)}"] = float(v)
    return out


def _log(mlflow, client, reg: Registry, target: MlflowTarget, version: str) -> str:
    from transformers import pipeline

    path, meta = reg.checked_path(version), reg.metadata(version)
    lineage = [entry["version"] for entry in reversed(reg.lineage(version))]
    tags = {TAG: version, "ratchet.parent": str(meta.get("parent")), "ratchet.lineage": " > ".join(lineage),
            "ratchet.batch_id": str(meta.get("batch_id")), "ratchet.weights_sha256": str(meta.get("weights_sha256")),
            "ratchet.task": str(meta.get("task", "classification"))}
    experiment = client.get_experiment_by_name(target.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        target.experiment, artifact_location=target.artifacts)
    task = meta.get("pipeline_tag", "text-classification")
    with mlflow.start_run(experiment_id=experiment_id, run_name=version, tags=tags):
        mlflow.log_metrics(_metrics(meta))
        mlflow.log_dict(meta.get("gate") or {}, "ratchet/gate.json")
        mlflow.log_text(json.dumps(meta, indent=2, default=str), "ratchet/metadata.json")
        if (path / "README.md").exists():
            mlflow.log_artifact(str(path / "README.md"), "ratchet")
        import torch
        import transformers

        pins = [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}"]
        if has_stats(path):  # the pipeline would answer with the unused classifier rows
            info = _log_statistics_version(mlflow, path, meta, target, pins)
        else:
            info = mlflow.transformers.log_model(
                pipeline(task, model=str(path), tokenizer=str(path)), name="model", task=task,
                registered_model_name=target.model, pip_requirements=pins)
    mv = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(target.model, mv, key, value)
    return mv


def _log_statistics_version(mlflow, path: Path, meta: dict, target: MlflowTarget, pins: list[str]):
    """A class-statistics version as a pyfunc answering through Ratchet's loader
    (tasks/registry/mlflow_pyfunc.py), with the `tasks` package beside it."""
    import numpy
    import pandas

    import tasks
    from tasks.registry.mlflow_pyfunc import MODEL_ARTIFACT, RatchetClassifier

    max_length = int(((meta.get("params") or {}).get("model") or {}).get("max_length") or 128)
    return mlflow.pyfunc.log_model(
        name="model", python_model=RatchetClassifier(max_length=max_length),
        artifacts={MODEL_ARTIFACT: str(path)}, code_paths=[str(Path(tasks.__file__).parent)],
        registered_model_name=target.model,
        pip_requirements=[*pins, f"numpy=={numpy.__version__}", f"pandas=={pandas.__version__}"])


def sync(reg: Registry, target: MlflowTarget, version: str | None = None) -> dict:
    """Export `version` (default: production) and production if MLflow lacks them, then
    point the `champion` alias at production's MLflow version."""
    mlflow, client = _client(target)
    production = reg.resolve("production")
    version = version or production
    have = exported(client, target)
    logged = []
    for wanted in dict.fromkeys(v for v in (version, production) if v):
        if wanted not in have:
            have[wanted] = _log(mlflow, client, reg, target, wanted)
            logged.append(wanted)
    if production:
        client.set_registered_model_alias(target.model, CHAMPION, have[production])
    return {"mlflow": target.uri, "model": target.model, "version": version,
            "mlflow_version": have.get(version), "champion": have.get(production) if production else None,
            "logged": logged}
