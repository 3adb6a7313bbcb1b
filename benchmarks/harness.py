"""Run one strategy over a stream through Ratchet's real stage functions.

For every batch, exactly what the retrain flow does between drift and promote:
`tasks.train.finetune.train_candidate` from the current production model (its stored replay
buffer included), `tasks.judge.evaluate.evaluate` of candidate and champion on the exam (the
held-out rows of every accepted batch plus the new one), `tasks.judge.gate.decide`, and either
the candidate becomes production or it is discarded. Registry, validation and drift are
left out here (their cost is measured by benchmarks/overhead.py).

After each batch the production model is scored on every batch's held-out rows, the
future ones included, to fill one row of the accuracy matrix. A batch whose labels the
model does not have scores exactly 0 without running it.

A model answers each held-out set once: its predictions are kept per batch (`Answers`),
so the champion, which answered the old slices as the previous candidate, is only run on
the new batch's rows. The flow, which starts afresh for every batch, runs it on all of them.
"""

from __future__ import annotations

import inspect
import json
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from benchmarks.metrics import stream_scores
from benchmarks.streams import Batch
from tasks.core.config import Params, attempt_params, stats_head_on
from tasks.judge.evaluate import evaluate, predict, sheets
from tasks.train.finetune import train_candidate
from tasks.judge.gate import decide
from tasks.train.model import Classifier, count_truncated, load_classifier


@dataclass
class StrategyRun:
    matrix: list[list[float]]
    samples: int = 0
    forward_rows: int = 0  # rows run forward only to learn from (train.stats_head), no optimizer step
    train_s: float = 0.0
    wall_s: float = 0.0
    peak_mem_mb: float = 0.0
    promotions: int = 0
    rejections: int = 0
    batches: list[dict] = field(default_factory=list)

    def result(self, joint: bool = False) -> dict:
        """The per-strategy JSON entry of the issue, accuracies as fractions."""
        if joint:
            acc, bwt, forgetting = round(sum(self.matrix[-1]) / len(self.matrix[-1]), 4), None, None
        else:
            scores = stream_scores(self.matrix)
            acc, bwt, forgetting = scores.acc, scores.bwt, scores.max_forgetting
        return {"acc": acc, "bwt": bwt, "max_forgetting": forgetting, "matrix": self.matrix,
                "samples": self.samples, "forward_rows": self.forward_rows, "wall_s": round(self.wall_s, 1),
                "samples_per_s": round(self.samples / self.train_s, 1) if self.train_s else None,
                "peak_mem_mb": round(self.peak_mem_mb, 1), "promotions": self.promotions,
                "rejections": self.rejections}


def peak_mem_mb() -> float:
    """Peak resident memory of this process (and CUDA memory when training ran there)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        rss += torch.cuda.max_memory_allocated() / 2**20
    return rss


def _train(champion: str | None, train: pd.DataFrame, dev: pd.DataFrame, out: Path, params: Params,
           pool: pd.DataFrame | None = None):
    # the engine may take a dev split (early stopping); pass it only where it is accepted
    kwargs = {"champion_dir": champion, "train_rows": train, "out_dir": out, "params": params}
    if pool is not None:
        kwargs["replay_pool"] = pool
    if "dev_rows" in inspect.signature(train_candidate).parameters:
        kwargs["dev_rows"] = dev
    return train_candidate(**kwargs)


def _exam(batches: list[Batch]) -> pd.DataFrame:
    return pd.concat([b.test for b in batches], ignore_index=True)


def matrix_row(clf: Classifier, known: dict, batches: list[Batch], params: Params) -> list[float]:
    """Accuracy on each batch's held-out rows; `known` holds the ones already scored."""
    labels = set(clf.labels)
    todo = [b for b in batches if b.name not in known and labels & set(b.test["label"])]
    scored = dict(known)
    if todo:
        sheet = evaluate(clf, _exam(todo), todo[-1].name, batch_size=params.evaluate.batch_size,
                         max_length=params.model.max_length)["all"]["batches"]
        scored |= {name: s["accuracy"] for name, s in sheet.items()}
    return [float(scored.get(b.name, 0.0)) for b in batches]


class Answers:
    """Each model's predictions on each batch's held-out rows, keyed by the model's folder."""

    def __init__(self, params: Params):
        self.by_model: dict[str, dict[str, list[str]]] = {}
        self.ev = {"batch_size": params.evaluate.batch_size, "max_length": params.model.max_length}

    def evaluate(self, path: str, clf: Classifier, batches: list[Batch], new_name: str | list[str]) -> dict:
        """`tasks.judge.evaluate.evaluate` on the exam of `batches`, predicting only what is new."""
        known = self.by_model.setdefault(path, {})
        for b in batches:
            if b.name not in known:
                known[b.name] = predict(clf, list(b.test["text"]), **self.ev)
        exam = _exam(batches)
        truncated = count_truncated(clf.tokenizer, list(exam["text"]), self.ev["max_length"])
        return sheets(exam, [p for b in batches for p in known[b.name]], new_name, truncated)

    def forget(self, path: str | None) -> None:
        self.by_model.pop(path, None)
        if path:
            shutil.rmtree(path, ignore_errors=True)


@dataclass
class Stream:
    """What the chain knows while a strategy runs: production, the batches it learned, the
    ones still pending (rejected after every attempt), and each version's exam answers."""

    champion: str | None = None
    accepted: list[Batch] = field(default_factory=list)
    pending: list[Batch] = field(default_factory=list)
    history: dict[str, pd.Series] = field(default_factory=dict)
    labels: dict[str, list[str]] = field(default_factory=dict)  # each version's labels, for the floor


def _judge(stream: Stream, batch: Batch, i: int, attempt: int, params: Params, workdir: Path, answers: Answers):
    """One attempt: train from production on the batch (and pending rows), examine, gate."""
    train = pd.concat([*[b.train for b in stream.pending], batch.train], ignore_index=True)
    pool = pd.concat([b.train for b in stream.accepted], ignore_index=True) \
        if params.replay.pool == "lineage" and stream.accepted else None
    cand = _train(stream.champion, train, batch.split.dev, workdir / f"candidate-{i:02d}-{attempt}", params, pool)
    exam = stream.accepted + stream.pending + [batch]
    new_ids = [batch.name, *[b.name for b in stream.pending]]
    cand_clf = load_classifier(cand.path)
    cand_sheet = answers.evaluate(cand.path, cand_clf, exam, new_ids)
    champ_clf = load_classifier(stream.champion) if stream.champion else None
    champ_sheet = answers.evaluate(stream.champion, champ_clf, exam, new_ids) if stream.champion else None
    decision = decide(cand_sheet, champ_sheet, params.gate, params.train.seed, stream.history, labels=stream.labels)
    return cand, cand_clf, cand_sheet, champ_clf, champ_sheet, decision


def run_incremental(batches: list[Batch], params: Params, workdir: Path, gate: str = "enforce") -> StrategyRun:
    """The stream batch by batch. Enforced, the gate decides as in the flow: a rejected
    candidate is retried with the remediation ladder, and a batch no attempt fixes stays
    pending and is trained on with the next one. Advisory, the first attempt's verdict is
    only counted and the chain always advances."""
    run, started = StrategyRun(matrix=[]), time.perf_counter()
    stream, answers = Stream(), Answers(params)
    attempts = min(params.remediation.max_attempts, len(params.remediation.ladder) + 1) if gate == "enforce" else 1
    for i, batch in enumerate(batches):
        tried = []
        for attempt in range(attempts):
            got = _judge(stream, batch, i, attempt, attempt_params(params, attempt), workdir, answers)
            cand, cand_clf, cand_sheet, champ_clf, champ_sheet, decision = got
            tried.append(decision.promote)
            run.samples += cand.train.samples
            run.forward_rows += cand.train.stats_rows
            run.train_s += cand.train.seconds
            if decision.promote or gate == "advisory" or attempt == attempts - 1 or stats_head_on(params):
                break
            answers.forget(cand.path)
        run.promotions += decision.promote
        run.rejections += not decision.promote
        if decision.promote or gate == "advisory":
            answers.forget(stream.champion)
            stream.champion, prod, sheet = cand.path, cand_clf, cand_sheet
            stream.accepted += [*stream.pending, batch]
            stream.pending = []
            stream.history[cand.path] = pd.Series(cand_sheet["rows"]["correct"], index=cand_sheet["rows"]["key"])
            stream.labels[cand.path] = list(cand_clf.labels)
        else:
            answers.forget(cand.path)
            stream.pending.append(batch)
            prod, sheet = champ_clf, champ_sheet
        known = {name: s["accuracy"] for name, s in sheet["all"]["batches"].items()} if sheet else {}
        run.matrix.append(matrix_row(prod, known, batches, params) if prod else [0.0] * len(batches))
        run.batches.append({"batch": batch.name, "promoted": decision.promote, "reasons": decision.reasons[:3],
                            "attempts": tried, "pending": [b.name for b in stream.pending],
                            "new_rows": cand.train.new_rows, "replay_rows": cand.train.replay_rows,
                            "train_samples": cand.train.samples, "stats_rows": cand.train.stats_rows,
                            "train_s": cand.train.seconds})
        # one line a batch, with its row of the accuracy matrix: a run stopped before its
        # strategy ends still says how far it got and what production knew at each step
        print(json.dumps({"batch_done": run.batches[-1], "row": run.matrix[-1], "samples": run.samples,
                          "wall_s": round(time.perf_counter() - started, 1)}), flush=True)
    answers.forget(stream.champion)
    run.wall_s = time.perf_counter() - started
    run.peak_mem_mb = peak_mem_mb()
    return run


def run_joint(batches: list[Batch], params: Params, workdir: Path) -> StrategyRun:
    """One fine-tune from the base model on every batch's training rows."""
    started = time.perf_counter()
    train = pd.concat([b.train for b in batches], ignore_index=True)
    dev = pd.concat([b.split.dev for b in batches], ignore_index=True)
    cand = _train(None, train, dev, workdir / "joint", params)
    row = matrix_row(load_classifier(cand.path), {}, batches, params)
    shutil.rmtree(cand.path, ignore_errors=True)
    run = StrategyRun(matrix=[row], samples=cand.train.samples, train_s=cand.train.seconds)
    run.wall_s = time.perf_counter() - started
    run.peak_mem_mb = peak_mem_mb()
    run.batches.append({"batch": "all", "new_rows": len(train), "train_samples": cand.train.samples,
                        "train_s": cand.train.seconds})
    return run
