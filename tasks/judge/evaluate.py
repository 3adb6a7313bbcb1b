"""Evaluate: the exam. Candidate and champion answer every held-out slice seen so far.

The exam is the union of the held-out rows of every accepted batch (data/exam/). A
model is scored overall, per slice and per batch held-out set (accuracy, macro-F1, rows,
and precision/recall/F1/support per label); the gate compares the two score sheets and
tasks/registry/matrix.py keeps the per-batch accuracies across versions. Labels a model has never
seen simply count as errors for it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import f1_score, precision_recall_fscore_support

from tasks.train.model import Classifier, count_truncated, top_answers
from tasks.train.stats_head import StatsHeadModel


@dataclass(frozen=True)
class SliceScore:
    rows: int
    accuracy: float
    macro_f1: float


def predict(clf: Classifier, texts: list[str], *, batch_size: int, max_length: int,
            remember: bool = False) -> list[str]:
    """Predicted label names, in input order."""
    return [label for label, _ in predict_scored(clf, texts, batch_size=batch_size, max_length=max_length,
                                                 remember=remember)]


def predict_scored(clf: Classifier, texts: list[str], *, batch_size: int, max_length: int,
                   remember: bool = False) -> list[tuple[str, float]]:
    """(label, softmax probability) of the top label per text, in input order (length-sorted
    inside for speed). A statistics head answers from the pooled vectors it knows and runs
    the encoder over the rest only; `remember` keeps those (the exam's rows)."""
    model = clf.model.eval()
    labels = clf.labels
    if isinstance(model, StatsHeadModel):
        with torch.inference_mode():
            best, prob = top_answers(model.text_logits(clf.tokenizer, texts, max_length=max_length,
                                                       batch_size=batch_size, remember=remember))
        return [(labels[p], s) for p, s in zip(best, prob)]
    order = np.argsort([len(t) for t in texts], kind="stable")
    out: list[tuple[int, float]] = [(0, 0.0)] * len(texts)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = clf.tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length,
                                padding=True, return_tensors="pt")
            best, prob = top_answers(model(**enc).logits)
            for i, p, s in zip(idx, best, prob):
                out[i] = (p, s)
    return [(labels[p], s) for p, s in out]


def score(gold: pd.Series, pred: pd.Series) -> SliceScore:
    gold, pred = gold.astype(str), pred.astype(str)
    return SliceScore(
        rows=len(gold),
        accuracy=round(float((gold.values == pred.values).mean()), 4) if len(gold) else 0.0,
        macro_f1=round(float(f1_score(gold, pred, average="macro", zero_division=0)), 4) if len(gold) else 0.0,
    )


def label_scores(gold: pd.Series, pred: pd.Series) -> dict[str, dict]:
    """{label: {precision, recall, f1, support}} for every gold label present, so a drop
    hidden in an average (one intent collapsing) shows up by name."""
    gold, pred = gold.astype(str).values, pred.astype(str).values
    labels = sorted(set(gold))
    if not labels:
        return {}
    p, r, f, n = precision_recall_fscore_support(gold, pred, labels=labels, zero_division=0)
    return {label: {"precision": round(float(p[i]), 4), "recall": round(float(r[i]), 4),
                    "f1": round(float(f[i]), 4), "support": int(n[i])} for i, label in enumerate(labels)}


def sheet(exam: pd.DataFrame, pred: pd.Series) -> dict:
    """Score sheet: {"overall": {...}, "slices": {slice: {...}}, "batches": {batch_id: {...}},
    "per_label": {"overall": {label: {...}}, "slices": {slice: {label: ...}}, "batches": ...}}."""
    out = {"overall": asdict(score(exam["label"], pred)), "slices": {}, "batches": {},
           "per_label": {"overall": label_scores(exam["label"], pred), "slices": {}, "batches": {}}}
    for key, column in (("slices", "slice"), ("batches", "batch_id")):
        for name, group in exam.groupby(column, sort=True):
            out[key][str(name)] = asdict(score(group["label"], pred.loc[group.index]))
            out["per_label"][key][str(name)] = label_scores(group["label"], pred.loc[group.index])
    return out


def evaluate(clf: Classifier | None, exam: pd.DataFrame, new_batch_id: str | list[str], *,
             batch_size: int, max_length: int, known: dict[int, str] | None = None) -> dict:
    """Sheets for the whole exam ("all"), the exam before this batch ("old", None when it
    was empty) and this batch's held-out rows ("new"), and how many exam texts were longer
    than `max_length` tokens and judged on their truncated start. `clf` None = no model yet.
    `known`: this model's answers already given on some rows (position: label), not asked again."""
    exam = exam.reset_index(drop=True)
    if clf is None or exam.empty:
        return sheets(exam, [""] * len(exam), new_batch_id, truncated=0)
    texts = list(exam["text"])
    predicted = fill_in(known, len(texts),
                        lambda at: predict(clf, [texts[i] for i in at], batch_size=batch_size, max_length=max_length,
                                           remember=True))
    return sheets(exam, predicted, new_batch_id, truncated=count_truncated(clf.tokenizer, texts, max_length))


def fill_in(known: dict[int, object] | None, n: int, answer) -> list:
    """One answer per exam row: the `known` ones (position: answer) as given, and for the
    others `answer(positions)` (the model's answers on those rows, in that order)."""
    known = known or {}
    todo = [i for i in range(n) if i not in known]
    got = dict(zip(todo, answer(todo))) if todo else {}
    return [known[i] if i in known else got[i] for i in range(n)]


def row_keys(exam: pd.DataFrame) -> list[str]:
    """A stable key per exam row: its batch id and its position in that batch's held-out
    file (exam files are written once), so answers can be matched across versions."""
    position = exam.groupby("batch_id", sort=False).cumcount()
    return (exam["batch_id"].astype(str) + ":" + position.astype(str)).tolist()


def sheets(exam: pd.DataFrame, predicted: list[str], new_batch_id: str | list[str], truncated: int) -> dict:
    """`evaluate`'s result from predictions already made (one per exam row, in order).
    `new_batch_id` may list several batches (this one and pending ones not learned yet):
    their rows are judged as new, not as old knowledge."""
    exam = exam.reset_index(drop=True)
    pred = pd.Series(predicted, index=exam.index, dtype=str)
    new_ids = [new_batch_id] if isinstance(new_batch_id, str) else list(new_batch_id)
    is_new = exam["batch_id"].isin(new_ids)
    return {
        "all": sheet(exam, pred),
        "old": sheet(exam[~is_new], pred[~is_new]) if (~is_new).any() else None,
        "new": sheet(exam[is_new], pred[is_new]),
        "truncated_texts": truncated,
        # per-row outcomes in exam order: the gate pairs candidate and champion on them
        "rows": {"slice": exam["slice"].astype(str).tolist(), "is_new": is_new.tolist(),
                 "key": row_keys(exam), "pred": pred.astype(str).tolist(),
                 "correct": (exam["label"].astype(str).values == pred.astype(str).values).astype(int).tolist()},
    }


def load_exam(exam_dir, batch_ids: list[str]) -> pd.DataFrame:
    """The exam for a list of batch ids, in that order."""
    parts = [pd.read_parquet(Path(exam_dir) / f"{b}.parquet") for b in batch_ids]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["text", "label", "slice", "batch_id"])


# The Prefect task is flows/attempts.py `evaluate_task`: it evaluates through the task type.
