"""`ratchet validate FILE` and `ratchet drift FILE` for every task type: what the flow
would decide about a delivery, through the kind's own parser, row checks, split and drift
signals, without storing or training anything (only reports/<run_id>/ is written)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks.core.config import Params
from tasks.core.storage import read_bytes, size_of
from tasks.core.workspace import Workspace
from tasks.drift.policy import load_pending
from tasks.intake.batch import Intake, batch_id_for, batch_id_of, load_train, parse_delivery, size_problem, source_name
from tasks.judge.evaluate import load_exam
from tasks.kinds.base import TaskKind
from tasks.registry.store import Registry
from tasks.validate.checks import ValidationResult, too_large


def read_delivery(kind: TaskKind, source: str, params: Params) -> Intake | str:
    """The parsed delivery (a parse failure is in its `parse_error`), or why its size refuses it."""
    endpoint = params.validate.s3_endpoint or None
    problem = size_problem(size_of(source, endpoint_url=endpoint), params.intake.max_bytes)
    if problem:
        return problem
    raw = read_bytes(source, endpoint_url=endpoint)
    return parse_delivery(raw, source_name(source), params.validate.encoding, batch_id_for(raw), Path(source),
                          kind.parse, params.intake.max_bytes)


def check_file(kind: TaskKind, source: str, ws: Workspace, params: Params) -> tuple[str, ValidationResult]:
    """(batch id, validation result) against production and params.yaml."""
    got = read_delivery(kind, source, params)
    if isinstance(got, str):
        return batch_id_of(source, params.validate.s3_endpoint or None), too_large(got)
    return got.batch_id, kind.validate(got, ws, params, Registry(ws.models_dir))


def check_drift(kind: TaskKind, source: str, ws: Workspace, params: Params, run_id: str):
    """(validation result, drift result or None when validation rejects the file): the rows
    that would go on against the data behind production and the pending batches, as the
    flow's reference."""
    got = read_delivery(kind, source, params)
    if isinstance(got, str):
        return too_large(got), None
    reg = Registry(ws.models_dir)
    checked = kind.validate(got, ws, params, reg)
    if not checked.passed:
        return checked, None
    champion = reg.resolve("production")
    meta = reg.metadata(champion) if champion else {}
    lineage = list(meta.get("batch_ids", []))
    lineage += [b for b in load_pending(ws.data_dir) if b not in lineage]
    split, _ = kind.split(checked.kept(got.frame), got.batch_id, params.intake.test_share, ws, lineage)
    rows = pd.concat([split.train, split.dev, split.test], ignore_index=True)
    return checked, kind.drift(rows, load_train(lineage, ws), params, reg.path(champion) if champion else None,
                               meta or None, ws.run_dir(run_id), load_exam(ws.exam_dir, lineage))
