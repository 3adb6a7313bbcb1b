"""The retrain flow: one delivered batch through the whole path of docs/architecture.md.

intake -> validate -> (quarantine | split) -> drift -> finetune -> evaluate -> gate -> promote

Composition only: every step is a task from `tasks/`; this module decides the order,
what each outcome means, and writes the decision JSON that every outcome leaves behind.
Each stage of the path has one small function below; `retrain` strings them together
and stops at the first one that settles the outcome.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger

from flows.attempts import train_and_judge
from flows.steps import (drift_task, intake_task, mlflow_task, promote_task, publish_task, record_promotion_task,
                         split_task, validate_task)
from tasks.judge.answers import write_answers
from tasks.audit.record import promotion_metadata, record_data
from tasks.core.config import Params, load_params
from tasks.intake.batch import Intake, Split, batch_id_of, is_decided, load_train, mark_decided
from tasks.judge.evaluate import load_exam
from tasks.kinds import TaskKind, get_kind
from flows import events
from flows.lock import batch_claim, promotion_lock
from flows.notify import publish, report_paths
from tasks.drift.policy import add_pending, clear_pending, decide, load_pending
from tasks.validate.quarantine import quarantine_batch, quarantine_rows
from tasks.registry.store import Registry, RegistryError
from tasks.registry.registry_s3 import Mirror
from tasks.registry.mlflow_export import MlflowTarget
from tasks.core.storage import StorageError
from tasks.validate.checks import too_large
from tasks.core.workspace import Workspace

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


@dataclass
class Run:
    """What the stages of one run share: where, with which params, against which champion."""

    ws: Workspace
    params: Params
    reg: Registry
    champion: str | None
    source: str
    run_id: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> TaskKind:
        """The task type's plug-in (tasks/kinds/): everything in the path that differs by task."""
        return get_kind(self.params.task.type)

    def outcome(self, status: str, batch_id: str, reasons: list[str], version: str | None = None) -> Outcome:
        production = version if status == "promoted" else self.champion
        return Outcome(status, batch_id, self.run_id, reasons, version=version,
                       production=production, details=self.details)


def _finish(outcome: Outcome, run: Run, decided: bool = True) -> dict:
    """decision.json, the batch marked decided (not when `decided` is False: another run
    has it in hand), artifacts + webhook, and the events of what changed."""
    run_dir = run.ws.run_dir(outcome.run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "decision.json").write_text(json.dumps(outcome.to_dict(), indent=2, default=str))
    if decided and outcome.status != "quarantined":
        mark_decided(outcome.batch_id, run.ws, outcome.status, outcome.run_id)
    get_run_logger().info("batch %s: %s (%s)", outcome.batch_id, outcome.status, "; ".join(outcome.reasons))
    publish(outcome.to_dict(), run_dir, run.params.ops.webhook_url)  # Prefect artifacts + webhook
    previous = run.champion if outcome.status == "promoted" else None  # the champion it replaced
    for name, payload in events.decision(outcome.to_dict(), report_paths(outcome.to_dict(), run_dir), previous):
        events.emit(name, run.ws.root, payload, batch_id=outcome.batch_id, version=outcome.version)
    return outcome.to_dict()


def _stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")


def _run_name() -> str:
    from prefect.runtime import flow_run

    batch = Path(str(flow_run.parameters.get("batch", "batch")))
    try:  # the batch id is the content hash: the same one intake will give it
        return f"retrain-{batch.stem}-{batch_id_of(batch)}"  # streamed: the file may be huge
    except OSError:
        return f"retrain-{batch.stem}"


def _claim_production(run: Run, batch_id: str, force: bool) -> tuple[list[str], Outcome | None]:
    """Inside the promotion lock: production may have moved while this run waited, so
    train from and judge against the current one; a batch a concurrent run has just
    promoted is not trained on twice."""
    current = run.reg.resolve("production")
    if current != run.champion:
        run.details["champion_moved"] = {"from": run.champion, "to": current}
        run.champion = current
    lineage = run.reg.metadata(current)["batch_ids"] if current else []
    if set(load_pending(run.ws.data_dir)) & set(lineage):  # a run killed between promote and clear_pending
        clear_pending(run.ws.data_dir, lineage, current)
    if batch_id in lineage and not force:
        for left in run.ws.scratch_dir.glob(f"{batch_id}-*"):  # that killed run's candidates
            shutil.rmtree(left, ignore_errors=True)
        return lineage, run.outcome("skipped", batch_id, [
            f"batch {batch_id} is already in production {current}: promoted by a concurrent run while this one "
            "waited, or by an earlier run of it killed before it recorded its decision"])
    return lineage, None


def _validate_stage(run: Run, got: Intake) -> Outcome | pd.DataFrame:
    """Validation; a rejected batch is quarantined byte-for-byte and settles the run.
    Otherwise the rows that go on: bad rows dropped under `on_bad_rows: drop_rows` (kept
    in the quarantine with their reasons) and rows that would leak into or out of the
    exam removed; the counts are in the decision's details.validation.counts."""
    if got.too_large:  # refused from its size; nothing was read
        return _quarantine(run, got, too_large(got.too_large))
    return _verdict(run, got, validate_task(run.kind, got, run.ws, run.params, run.reg))


def _quarantine(run: Run, got: Intake, checked) -> Outcome:
    """A rejected batch: its raw bytes and the report go to the quarantine; the run is settled."""
    run.details["validation"] = checked.to_dict()
    run.details["quarantine"] = str(quarantine_batch(got, checked, run.source, run.ws))
    return run.outcome("quarantined", got.batch_id, checked.summary().splitlines())


def _verdict(run: Run, got: Intake, checked) -> Outcome | pd.DataFrame:
    """The rows that go on after validation, or the quarantine."""
    if not checked.passed:
        return _quarantine(run, got, checked)
    run.details["validation"] = checked.to_dict()
    if checked.dropped:
        run.details["dropped_rows"] = str(quarantine_rows(got, checked, run.source, run.ws))
    return checked.kept(got.frame)


def _drift_stage(run: Run, split: Split, lineage: list[str], batch_id: str, force: bool = False,
                 waiting: int = 0) -> Outcome | None:
    """Drift of the new batch against the data behind production (and pending batches),
    then the retrain policy: a batch it turns down is skipped (exit 5) but kept pending."""
    reference = load_train(lineage, run.ws)
    meta = run.reg.metadata(run.champion) if run.champion else None
    drift = drift_task(run.kind, pd.concat([split.train, split.test], ignore_index=True), reference, run.params,
                       run.reg.path(run.champion) if run.champion else None, meta, run.ws.run_dir(run.run_id),
                       load_exam(run.ws.exam_dir, lineage))
    return _policy_stage(run, drift, batch_id, force, waiting + len(split.train), meta)


def _policy_stage(run: Run, drift, batch_id: str, force: bool, waiting_rows: int, meta: dict | None) -> Outcome | None:
    """After drift: the retrain policy; a batch it turns down is skipped (exit 5) but kept
    pending for the next retrain."""
    run.details["drift"] = drift.headline()
    policy = decide(drift, run.params.retrain, has_champion=run.champion is not None, force=force,
                    waiting_rows=waiting_rows, champion_created_at=(meta or {}).get("created_at"))
    run.details["policy"] = policy.to_dict()
    if policy.retrain:
        return None
    run.details["pending"] = add_pending(run.ws.data_dir, batch_id)
    return run.outcome("skipped", batch_id, [policy.reason, drift.reason])


def _promote_stage(run: Run, candidate, cand_sheets: dict, decision, batch_id: str, lineage: list[str],
                   exam: pd.DataFrame, params: Params | None = None) -> str:
    """Register the candidate as a new immutable version (with the lineage's accuracy
    matrix grown by one row), move production to it, then mirror it when configured."""
    write_answers(candidate.path, cand_sheets,  # sealed with the version: the next gate's floor
                  run.kind.statistic((params or run.params).gate).columns)
    from tasks.train.model import save_open_vectors  # torch: not at import time

    save_open_vectors(candidate.path)  # a statistics version: its exam rows' pooled vectors, for the next exam
    # the vectors of drift's reference sample (the lineage's held-out rows), for the drift runs judged against it
    run.kind.store_drift_reference(Path(candidate.path), exam, params or run.params)
    metadata = promotion_metadata(  # the promoted attempt's params: an audit replays exactly those
        params or run.params, run.kind, parent_meta=run.reg.metadata(run.champion) if run.champion else {},
        champion_scores=run.details.get("champion_scores"), parent=run.champion, lineage=lineage,
        batch_id=batch_id, source=run.source, metrics=cand_sheets["all"], gate=decision.to_dict(),
        train=candidate.train.to_dict(), run_id=run.run_id, root=run.ws.root, data_hash=record_data(run.ws))
    version = promote_task(run.reg, Path(candidate.path), metadata, works=run.kind.works)
    run.details["audit"] = record_promotion_task(run.ws, run.params, run.reg, version)  # DVC, git tags, push
    mirror = Mirror.from_config(run.params.registry)
    if mirror:
        try:
            run.details["mirror"] = publish_task(run.reg, mirror, version)
        except (RegistryError, StorageError) as exc:  # production moved locally; the mirror catches up on a retry
            run.details["mirror"] = {"mirror": mirror.uri, "version": version, "error": str(exc),
                                     "retry": f"ratchet models push {version}"}
            get_run_logger().warning("S3 mirror not updated: %s (retry: ratchet models push %s)", exc, version)
    target = MlflowTarget.from_config(run.params.registry, run.ws.root)
    if target:
        try:
            run.details["mlflow"] = mlflow_task(run.reg, target, version)
        except Exception as exc:  # MLflow down or refusing: never blocks a promotion
            run.details["mlflow"] = {"mlflow": target.uri, "version": version, "error": f"{type(exc).__name__}: {exc}",
                                     "retry": "ratchet models mlflow-sync"}
            get_run_logger().warning("MLflow not updated: %s (retry: ratchet models mlflow-sync)", exc)
    return version


@flow(name="retrain", flow_run_name=_run_name, log_prints=True)
def retrain(batch: str, workspace: str = ".", force: bool = False,
            overrides: dict[str, Any] | None = None) -> dict:
    """Run one batch through Ratchet; returns the decision (also in reports/<run>/decision.json)."""
    ws = Workspace.at(workspace)
    reg = Registry(ws.models_dir)
    params = load_params(ws.params_path, overrides)
    run = Run(ws=ws, params=params, reg=reg, champion=reg.resolve("production"), source=str(batch))
    batch_id = batch_id_of(batch, params.validate.s3_endpoint or None)  # streamed: the file may be huge
    with batch_claim(ws.root, batch_id) as mine:
        if not mine:  # a burst of landed events for one file: another run has this batch in hand
            run.run_id = f"{_stamp()}-{batch_id}-busy-{uuid.uuid4().hex[:6]}"  # both may start in one second
            why = f"batch {batch_id} is being trained by another run right now; this run does nothing"
            return _finish(run.outcome("skipped", batch_id, [why]), run, decided=False)
        return _learn(run, batch, batch_id, force)


def _learn(run: Run, batch: str, batch_id: str, force: bool) -> dict:
    """The path of one batch, once this run holds its claim."""
    ws = run.ws
    recovered = run.reg.recover()  # what a run killed mid-move left half done
    run.champion = run.reg.resolve("production")
    if recovered:
        run.details["recovered"] = recovered
        get_run_logger().warning("registry recovered: %s", "; ".join(recovered))
    if run.champion:  # a damaged production is never drifted against, trained from or judged by
        run.reg.checked_path(run.champion)
    if is_decided(batch_id, ws) and not force:  # the same bytes, already decided: nothing to do
        run.run_id = f"{_stamp()}-{batch_id}"
        why = (f"batch {batch_id} is already pending: the next retrain trains on it"
               if batch_id in load_pending(ws.data_dir)
               else f"batch {batch_id} was already accepted; use --force to train on it again")
        return _finish(run.outcome("skipped", batch_id, [why]), run)

    got = intake_task(batch, ws, run.params.validate, run.params.intake.max_bytes, run.kind.parse)
    run.run_id = f"{_stamp()}-{got.batch_id}"
    checked = _validate_stage(run, got)
    if isinstance(checked, Outcome):
        return _finish(checked, run)
    events.emit(events.ACCEPTED, ws.root, events.accepted(got.batch_id, run.run_id, run.source,
                                                          run.details["validation"], ws.run_dir(run.run_id)),
                batch_id=got.batch_id)
    return _train(run, got, checked, force)


def _train(run: Run, got: Intake, checked: pd.DataFrame, force: bool) -> dict:
    """From an accepted batch's rows: split, drift and policy, then the attempts and the
    promotion, inside the promotion lock."""
    ws = run.ws
    lineage = run.reg.metadata(run.champion)["batch_ids"] if run.champion else []
    # batches the policy skipped earlier join the reference, the training rows and the lineage
    pending = [b for b in load_pending(ws.data_dir) if b not in lineage and b != got.batch_id]
    waiting = load_train(pending, ws)
    lineage = lineage + pending
    split, leaks = split_task(run.kind, checked, got.batch_id, run.params.intake.test_share, ws, lineage)
    if leaks is not None:
        run.details["leakage"] = leaks
    settled = _drift_stage(run, split, lineage, got.batch_id, force, 0 if waiting is None else len(waiting))
    if settled:
        return _finish(settled, run)
    if waiting is not None:
        split = Split(pd.concat([waiting, split.train], ignore_index=True), split.dev, split.test)

    ops = run.params.ops  # one run at a time trains from, judges against and moves production
    with promotion_lock(ws.models_dir, ops.promote_limit, ops.lock_timeout_seconds):
        lineage, settled = _claim_production(run, got.batch_id, force)
        if settled:
            return _finish(settled, run)
        pending = [b for b in pending if b not in lineage]
        lineage = lineage + pending
        judged = train_and_judge(run, split, got.batch_id, lineage, pending)
        try:
            return _settle(run, judged, got.batch_id, lineage)
        finally:
            for path in judged.scratch:
                shutil.rmtree(path, ignore_errors=True)


def _settle(run: Run, judged, batch_id: str, lineage: list[str]) -> dict:
    """Promote the passing attempt; or keep the batch pending, so the next retrain trains
    on its rows and examines its held-out ones (exit 3, production unchanged)."""
    decision, tried = judged.decision, len(judged.attempts)
    if not decision.promote:
        why = f"rejected by the gate after {tried} attempt(s): {decision.reasons[0]}"
        run.details["pending"] = add_pending(run.ws.data_dir, batch_id, why=why, attempts=tried)
        reasons = decision.reasons + [f"batch {batch_id} stays pending: the next retrain trains on it "
                                      "(`ratchet pending drop` removes it)"]
        return _finish(run.outcome("rejected", batch_id, reasons), run)
    version = _promote_stage(run, judged.candidate, judged.sheets, decision, batch_id, lineage, judged.exam,
                             judged.params)
    clear_pending(run.ws.data_dir, [*lineage, batch_id], version)
    note = [f"promoted at attempt {tried} of {run.params.remediation.max_attempts}"]
    return _finish(run.outcome("promoted", batch_id, note + decision.reasons, version=version), run)
