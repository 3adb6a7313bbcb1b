"""The Prefect edge: every stage function the flows call, as a Prefect task.

`tasks/` is plain Python (no Prefect import): it is what `dvc repro` runs through
tasks/stages/ and what the tests call directly. This module gives each call the flow
makes a task run in the Prefect UI, with retries where the work is idempotent I/O
(reading a delivery, S3, the webhook) and no result caching where an argument holds a
model or a tokenizer (hashing it would pickle the weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from tasks.audit.record import record_promotion
from tasks.core.config import GateConfig, Params, ValidateConfig
from tasks.core.workspace import Workspace
from tasks.intake.batch import Intake, Split, intake, store_split
from tasks.intake.landing import Arrival, arrivals
from tasks.judge.gate import ACCURACY, GateDecision, decide
from tasks.judge.reuse import Reuse, examine
from tasks.kinds import TaskKind
from tasks.registry.registry_s3 import Mirror, publish
from tasks.registry import mlflow_export
from tasks.registry.store import Registry, register_and_promote
from tasks.train.finetune import SENTENCES, Candidate, train_candidate


@task(name="intake", retries=2, retry_delay_seconds=[1, 5])
def intake_task(source: str | Path, ws: Workspace, cfg: ValidateConfig | None = None, max_bytes: int = 0,
                parser: Callable[[bytes, str, str], pd.DataFrame | None] | None = None) -> Intake:
    return intake(source, ws, cfg, max_bytes, parser)


@task(name="validate", cache_policy=NO_CACHE)  # the context holds a tokenizer: nothing to hash
def validate_task(kind: TaskKind, got: Intake, ws: Workspace, params: Params, reg: Registry):
    return kind.validate(got, ws, params, reg)


@task(name="split")
def split_task(kind: TaskKind, frame: pd.DataFrame, batch_id: str, test_share: float, ws: Workspace,
               lineage: list[str]) -> tuple[Split, dict | None]:
    """The kind's split (leaks against the lineage removed), stored: the held-out rows join the exam."""
    split, leaks = kind.split(frame, batch_id, test_share, ws, lineage)
    store_split(split, batch_id, ws, **({"task": kind.name, "leakage": leaks} if leaks is not None else {}))
    return split, leaks


@task(name="drift", cache_policy=NO_CACHE)  # NO_CACHE: the default policy would pickle the champion
def drift_task(kind: TaskKind, rows: pd.DataFrame, reference: pd.DataFrame | None, params: Params,
               champion_dir: Path | None, metadata: dict | None, out_dir: Path, heldout: pd.DataFrame | None = None):
    return kind.drift(rows, reference, params, champion_dir, metadata, out_dir, heldout)


@task(name="finetune")
def finetune_task(champion_dir, train_rows: pd.DataFrame, out_dir, params, dev_rows=None,
                  replay_pool: pd.DataFrame | None = None, training=SENTENCES) -> Candidate:
    return train_candidate(champion_dir=champion_dir, train_rows=train_rows, out_dir=out_dir, params=params,
                           dev_rows=dev_rows, replay_pool=replay_pool, training=training)


@task(name="evaluate")
def evaluate_task(kind: TaskKind, model_dir, exam: pd.DataFrame, new_ids: list[str], params: Params,
                  reuse: bool = False) -> tuple[dict, Reuse]:
    """The sheets, and how many rows came from the answers stored with the model (`reuse`)."""
    return examine(kind, model_dir, exam, new_ids, params, reuse)


@task(name="gate")
def gate_task(candidate: dict, champion: dict | None, cfg: GateConfig, seed: int = 0,
              history: dict | None = None, stat=ACCURACY, labels: dict | None = None) -> GateDecision:
    return decide(candidate, champion, cfg, seed, history, stat, labels)


@task(name="promote", retries=2, retry_delay_seconds=[1, 5])
def promote_task(registry: Registry, candidate_dir: Path, metadata: dict, works) -> str:
    return register_and_promote(registry, candidate_dir, metadata, works=works)


@task(name="record-promotion")
def record_promotion_task(ws: Workspace, params: Params, reg: Registry, version: str) -> dict:
    return record_promotion(ws, params, reg, version).to_dict()


@task(name="mirror", retries=2, retry_delay_seconds=[1, 5])
def publish_task(reg: Registry, mirror: Mirror, version: str) -> dict:
    """Idempotent, so Prefect's retries complete a push or alias move a blip interrupted."""
    return publish(reg, mirror, version, reason="gate passed")


@task(name="mlflow-export", retries=2, retry_delay_seconds=[1, 5])
def mlflow_task(reg: Registry, target: mlflow_export.MlflowTarget, version: str) -> dict:
    """Idempotent too: a retry never logs a version twice."""
    return mlflow_export.sync(reg, target, version)


@task(name="list-landing", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2))
def arrivals_task(landing: str, ws: Workspace, fingerprints: dict[str, dict]) -> list[Arrival]:
    return arrivals(landing, ws, fingerprints)
