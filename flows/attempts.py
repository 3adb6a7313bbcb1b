"""Attempts: fine-tune, examine and gate a candidate, retrying with stronger settings.

The middle of the retrain flow (flows/retrain.py), for every task type. The champion is
examined once, answering only the exam rows it has no stored answer for (tasks/judge/reuse.py);
then attempt 0 trains with params.yaml as it is and, while the gate
rejects and `remediation.max_attempts` and `remediation.time_budget_seconds` allow,
attempt i trains with rung i of `remediation.ladder` applied on top (more replay,
distillation, a frozen lower encoder...). Each attempt's scratch directory is keyed by
its own params, so a run killed between attempts reuses the finished ones and resumes
the interrupted one from its checkpoints. The first attempt that passes is promoted;
with `train.stats_head` on there is no second attempt (no rung changes such a
candidate). Every attempt is recorded (settings, gate table, seconds) in the decision.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from prefect import get_run_logger

from flows.exam_dask import examine_on_dask
from flows.steps import evaluate_task, finetune_task, gate_task

from tasks.judge.answers import lineage_answers, lineage_labels
from tasks.core.config import Params, attempt_params, params_hash, stats_head_on
from tasks.judge.evaluate import load_exam
from tasks.judge.gate import flipped_rows
from tasks.judge.reuse import Reuse
from tasks.intake.batch import Split, load_train


@dataclass
class Judged:
    """The attempt that settles the run (the passing one, else the last) and what was tried."""

    candidate: object
    sheets: dict
    decision: object
    params: Params  # the settling attempt's params: recorded with the version, replayed by audits
    attempts: list[dict] = field(default_factory=list)
    scratch: list[str] = field(default_factory=list)
    exam: pd.DataFrame | None = None  # the rows it was judged on: the lineage's held-out rows and the batch's


@dataclass(frozen=True)
class Exam:
    """What every attempt is judged on: the exam, the champion's answers, the lineage's."""

    rows: pd.DataFrame
    champion: dict | None
    history: dict
    new_ids: list[str]
    learned: list[str]  # the batches production learned: the pool `replay.pool: lineage` draws from
    reuse: Reuse | None = None  # how many of the champion's answers came from its store
    labels: dict = field(default_factory=dict)  # {lineage version: the labels it knew}, for the floor


def _examine(kind, model_dir, exam: pd.DataFrame, new_ids: list[str], params: Params, reuse: bool = False):
    """The exam in this process (a task), or on Dask (a subflow) when `evaluate.dask` is set."""
    if params.evaluate.dask:
        return examine_on_dask(kind, model_dir, exam, new_ids, params, reuse)
    return evaluate_task(kind, model_dir, exam, new_ids, params, reuse)


def examine_champion(run, champion_dir, batch_id: str, lineage: list[str], pending: list[str]) -> Exam:
    """The exam (every lineage batch's held-out rows plus this batch's) and the champion's
    answers on it, once for all attempts: its stored ones where they are sound, the model's
    on the other rows. Pending batches were never learned: new rows."""
    params = run.params
    # --force on a batch already in the lineage must not put its held-out rows in twice
    exam = load_exam(run.ws.exam_dir, [b for b in lineage if b != batch_id] + [batch_id])
    new_ids = [batch_id, *[b for b in pending if b != batch_id]]
    champ, reuse = _examine(run.kind, champion_dir, exam, new_ids, params, params.evaluate.reuse_answers) \
        if run.champion else (None, None)
    if reuse:
        get_run_logger().info("champion answers: %s", reuse.summary())
    history = lineage_answers(run.reg, run.champion)
    return Exam(exam, champ, history, new_ids, [b for b in lineage if b not in new_ids], reuse,
                lineage_labels(run.reg, history))


def _attempt(run, params: Params, champion_dir, split: Split, batch_id: str, exam: Exam):
    key = f"{batch_id}-{run.champion or 'base'}-{params_hash(params)}"
    pool = load_train(exam.learned, run.ws) if params.replay.pool == "lineage" and exam.learned else None
    candidate = finetune_task(champion_dir, split.train, run.ws.scratch_dir / key, params, split.dev, pool,
                              training=run.kind.training)
    sheets, _ = _examine(run.kind, candidate.path, exam.rows, exam.new_ids, params)
    decision = gate_task(sheets, exam.champion, params.gate, params.train.seed, exam.history,
                         run.kind.statistic(params.gate), exam.labels)
    return candidate, sheets, decision


def _record(attempt: int, params: Params, decision, candidate, seconds: float) -> dict:
    rung = dict(params.remediation.ladder[attempt - 1]) if attempt else {}
    return {"attempt": attempt + 1, "overrides": rung, "promote": decision.promote, "reasons": decision.reasons,
            "table": decision.markdown(), "seconds": round(seconds, 1),
            "train": {k: v for k, v in candidate.train.to_dict().items() if k != "losses"}}


def train_and_judge(run, split: Split, batch_id: str, lineage: list[str], pending: list[str]) -> Judged:
    """Attempts until one passes or the ladder, attempt count or time budget runs out."""
    champion_dir = run.reg.checked_path(run.champion) if run.champion else None  # never train on a damaged one
    exam = examine_champion(run, champion_dir, batch_id, lineage, pending)
    cfg = run.params.remediation
    started, attempts, scratch = time.monotonic(), [], []
    for attempt in range(min(cfg.max_attempts, len(cfg.ladder) + 1)):
        if attempt and time.monotonic() - started > cfg.time_budget_seconds:
            attempts[-1]["stopped"] = f"remediation.time_budget_seconds ({cfg.time_budget_seconds:g}) spent"
            break
        t0 = time.monotonic()
        params = attempt_params(run.params, attempt)
        candidate, sheets, decision = _attempt(run, params, champion_dir, split, batch_id, exam)
        attempts.append(_record(attempt, run.params, decision, candidate, time.monotonic() - t0))
        scratch.append(candidate.path)
        get_run_logger().info("attempt %d: %s", attempt + 1, "passed" if decision.promote else "; ".join(decision.reasons))
        if decision.promote:
            break
        if stats_head_on(params):
            attempts[-1]["stopped"] = ("train.stats_head: the ladder's rungs (replay, distillation) do not change a "
                                       "candidate learned as class statistics")
            break
    judged = Judged(candidate, sheets, decision, params, attempts, scratch, exam.rows)
    _write_reports(run, judged, exam)
    return judged


def _write_reports(run, judged: Judged, exam: Exam) -> None:
    """train_report.json, flips.csv and the decision's details for the settling attempt."""
    run_dir = run.ws.run_dir(run.run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    candidate, sheets, decision = judged.candidate, judged.sheets, judged.decision
    (run_dir / "train_report.json").write_text(json.dumps(candidate.train.to_dict(), indent=2))
    flips = flipped_rows(sheets, exam.champion, *run.kind.describe(exam.rows), run.params.gate.max_flip_rows) \
        if exam.champion else []
    if flips:
        pd.DataFrame(flips).to_csv(run_dir / "flips.csv", index=False)
    run.details.update({
        "train": candidate.train.to_dict() | {"losses": None}, "new_labels": candidate.new_labels,
        "gate": decision.to_dict(), "gate_table": decision.markdown(), "attempts": judged.attempts,
        "flips": _flip_summary(decision, run_dir / "flips.csv" if flips else None),
        "candidate_scores": sheets["all"], "champion_scores": exam.champion["all"] if exam.champion else None,
        "champion_answers": exam.reuse.to_dict() | {"summary": exam.reuse.summary()} if exam.reuse else None,
        # texts over model.max_length tokens are cut to it, in training and in the exam
        "truncated_texts": {"max_length": run.params.model.max_length, "train": candidate.train.truncated_texts,
                            "exam": sheets["truncated_texts"]},
    })


def _flip_summary(decision, path: Path | None) -> dict:
    overall = next((c for c in decision.checks if c.kind == "flips"), None)
    per_slice = {c.name.removeprefix("slice:"): {"negative": c.neg_flips, "positive": c.pos_flips, "rows": c.rows}
                 for c in decision.checks if c.kind == "old_slice" and c.neg_flips is not None}
    return {"negative_rate": overall.candidate if overall else None,
            "negative": overall.neg_flips if overall else 0, "positive": overall.pos_flips if overall else 0,
            "slices": per_slice, "rows_file": str(path) if path else None}
