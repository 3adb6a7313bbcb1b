"""The retrain flow: one delivered batch through the whole path of ARCHITECTURE.md.

intake -> validate -> (quarantine | split) -> drift -> finetune -> evaluate -> gate -> promote

Composition only: every step is a task from `tasks/`; this module decides the order,
what each outcome means, and writes the decision JSON that every outcome leaves behind.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger

from tasks.audit import record_data, version_metadata
from tasks.config import load_params
from tasks.drift import drift_task
from tasks.evaluate import evaluate_task, load_exam
from tasks.finetune import finetune_task
from tasks.gate import gate_task
from tasks.intake import intake_task, is_known, load_train, quarantine, split_task
from tasks.registry import Registry, promote_task
from tasks.validate import validate_task
from tasks.workspace import Workspace

EXIT = {"promoted": 0, "rejected": 3, "quarantined": 4, "skipped": 5}


@dataclass
class Outcome:
    status: str                      # promoted | rejected | quarantined | skipped
    batch_id: str
    run_id: str
    reasons: list[str]
    version: str | None = None       # the new version when promoted
    production: str | None = None    # production after this run
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT[self.status]

    def to_dict(self) -> dict:
        return {**asdict(self), "exit_code": self.exit_code}


def _finish(outcome: Outcome, ws: Workspace) -> Outcome:
    run_dir = ws.run_dir(outcome.run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "decision.json").write_text(json.dumps(outcome.to_dict(), indent=2, default=str))
    get_run_logger().info("batch %s: %s (%s)", outcome.batch_id, outcome.status, "; ".join(outcome.reasons))
    return outcome


def _lineage(reg: Registry, champion: str | None) -> list[str]:
    return reg.metadata(champion)["batch_ids"] if champion else []


def _run_name() -> str:
    from prefect.runtime import flow_run

    return f"retrain-{Path(str(flow_run.parameters.get('batch', 'batch'))).stem}"


@flow(name="retrain", flow_run_name=_run_name, log_prints=True)
def retrain(batch: str, workspace: str = ".", force: bool = False,
            overrides: dict[str, Any] | None = None) -> dict:
    """Run one batch through Ratchet; returns the decision (also in reports/<run>/decision.json)."""
    ws = Workspace.at(workspace)
    params = load_params(ws.params_path, overrides)
    reg = Registry(ws.models_dir)
    champion = reg.resolve("production")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")

    known = is_known(batch, ws)
    if known and not force:
        return _finish(Outcome("skipped", known, f"{stamp}-{known}", [
            f"batch {known} was already accepted; use --force to train on it again"],
            production=champion), ws).to_dict()

    got = intake_task(batch, ws)
    run_id = f"{stamp}-{got.batch_id}"
    checked = validate_task(got.frame, params.validate, got.parse_error)
    if not checked.passed:
        report = {"batch_id": got.batch_id, "source": str(batch), "validation": checked.to_dict()}
        where = quarantine(got, report, ws)
        return _finish(Outcome("quarantined", got.batch_id, run_id, checked.summary().splitlines(),
                               production=champion, details={"quarantine": str(where), **report}), ws).to_dict()

    split = split_task(got.frame, got.batch_id, params.intake.test_share, ws)
    lineage = _lineage(reg, champion)
    reference = load_train(lineage, ws)
    drift = drift_task(pd.concat([split.train, split.test], ignore_index=True), reference,
                       params.drift, ws.run_dir(run_id), params.train.seed)

    champion_dir = reg.checked_path(champion) if champion else None  # never train on a damaged champion
    candidate = finetune_task(champion_dir, split.train, ws.scratch_dir / run_id, params)
    # --force on a batch already in the lineage must not put its held-out rows in twice
    exam = load_exam(ws.exam_dir, [b for b in lineage if b != got.batch_id] + [got.batch_id])
    cand_sheets = evaluate_task(candidate.path, exam, got.batch_id, params.evaluate, params.model.max_length)
    champ_sheets = evaluate_task(champion_dir, exam, got.batch_id, params.evaluate, params.model.max_length)
    decision = gate_task(cand_sheets, champ_sheets if champion else None, params.gate, params.train.seed)

    details = {
        "drift": drift.to_dict(), "train": candidate.train.to_dict() | {"losses": None},
        "new_labels": candidate.new_labels, "gate": decision.to_dict(), "gate_table": decision.markdown(),
        "candidate_scores": cand_sheets["all"], "champion_scores": champ_sheets["all"],
    }
    if not decision.promote:
        shutil.rmtree(candidate.path, ignore_errors=True)
        return _finish(Outcome("rejected", got.batch_id, run_id, decision.reasons,
                               production=champion, details=details), ws).to_dict()
    metadata = version_metadata(
        params, parent=champion, lineage=lineage, batch_id=got.batch_id, source=str(batch),
        metrics=cand_sheets["all"], gate=decision.to_dict(), train=candidate.train.to_dict(),
        run_id=run_id, root=ws.root, data_hash=record_data(ws))
    version = promote_task(reg, Path(candidate.path), metadata)
    shutil.rmtree(candidate.path, ignore_errors=True)
    return _finish(Outcome("promoted", got.batch_id, run_id, decision.reasons, version=version,
                           production=version, details=details), ws).to_dict()
