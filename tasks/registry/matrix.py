"""Accuracy matrix: what each production version scored on each batch's held-out set.

The evaluate stage scores every model on every held-out set seen so far; this module keeps
those scores across promotions. Row i is the version that learned batch i (the production
lineage, oldest first), column j is batch j's held-out rows, so R[i][j] for j <= i is what
version i scored on batch j after learning it and everything before. R[i-1][i] is filled
too: the champion is examined on the new batch before it is learned. Other cells above the
diagonal are unknown (None / NaN): a version never sees batches that come after it.

From it, the standard continual-learning summaries (Lopez-Paz & Ranzato 2017, GEM;
Chaudhry et al. 2018, RWalk):
  BWT          = 1/(T-1) * sum_{j<T} (R[T][j] - R[j][j])     below 0: later training hurt earlier batches
  forgetting_j = max_{l<T} R[l][j] - R[T][j]   for j < T     how far batch j fell from its best

`bwt`, `forgetting` and `column_forgetting` are pure functions on a list of lists (None =
unknown) or a NumPy array (NaN = unknown), so benchmarks can reuse them; `extend` grows the
record stored in each version's metadata.json, `summary` derives the numbers shown on the
model card and by `ratchet status`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

Matrix = Sequence[Sequence[float | None]] | np.ndarray


def metric_label(metric: str | None) -> str:
    """How a score's metric name is shown in tables: "entity F1" for f1, accuracy when
    none was recorded, else the task type's own name ("balanced_accuracy": "balanced accuracy")."""
    return {"f1": "entity F1", None: "accuracy"}.get(metric, str(metric).replace("_", " "))


def as_array(matrix: Matrix) -> np.ndarray:
    """A float array with NaN for unknown cells; ragged rows are padded with NaN."""
    if isinstance(matrix, np.ndarray):
        return matrix.astype(float)
    rows = [list(r) for r in matrix]
    width = max((len(r) for r in rows), default=0)
    return np.array([[np.nan if v is None else float(v) for v in r] + [np.nan] * (width - len(r)) for r in rows],
                    dtype=float).reshape(len(rows), width)


def _clean(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 4)


def bwt(matrix: Matrix) -> float | None:
    """Backward transfer of the last row: mean over earlier batches j of R[T][j] - R[j][j].
    None with fewer than two rows (nothing learned before the last batch)."""
    r = as_array(matrix)
    t = r.shape[0]
    if t < 2 or r.shape[1] < t:
        return None
    deltas = [r[t - 1, j] - r[j, j] for j in range(t - 1)]
    deltas = [d for d in deltas if not math.isnan(d)]
    return _clean(float(np.mean(deltas))) if deltas else None


def forgetting(matrix: Matrix) -> list[float | None]:
    """Per earlier batch j < T: best score any earlier version reached on it minus the
    last version's score (Chaudhry et al.). 0 = nothing forgotten; never negative only when
    the last row is the best."""
    r = as_array(matrix)
    t = r.shape[0]
    return column_forgetting(r[:, : max(t - 1, 0)]) if t >= 2 else []


def column_forgetting(matrix: Matrix) -> list[float | None]:
    """Per column: max over every earlier row's known value minus the last row's value;
    None where the last row or all earlier rows are unknown. Works on any rectangle, e.g.
    rows = versions, columns = slices."""
    r = as_array(matrix)
    if r.shape[0] < 2:
        return [None] * r.shape[1]
    out: list[float | None] = []
    for j in range(r.shape[1]):
        earlier = r[:-1, j][~np.isnan(r[:-1, j])]
        last = r[-1, j]
        out.append(None if earlier.size == 0 or math.isnan(last) else _clean(float(earlier.max() - last)))
    return out


def average_forgetting(matrix: Matrix) -> float | None:
    known = [f for f in forgetting(matrix) if f is not None]
    return _clean(float(np.mean(known))) if known else None


def _accuracies(sheet: dict, key: str, metric: str = "accuracy") -> dict[str, float]:
    return {name: s[metric] for name, s in (sheet.get(key) or {}).items() if isinstance(s, dict)}


def extend(parent: dict | None, *, parent_version: str | None, batch_id: str, batch_ids: list[str],
           candidate: dict, champion: dict | None = None, metric: str = "accuracy") -> dict:
    """The record for a new version: its parent's record (None for the first version) plus
    one row. `candidate` / `champion` are their "all" score sheets on the exam of
    `batch_ids` (tasks.judge.evaluate.sheet); the champion's score on the new batch fills the
    parent's row in that column. The new row's version is None until the registry names it
    (`stamp`). A batch learned again (`--force`) moves to the last column. `metric`: the
    sheet's score the cells hold ("f1" for taggers: entity micro F1); the record says which,
    and keeps the cells under "accuracy" whatever the metric."""
    parent = parent or {"batches": [], "rows": [], "accuracy": [], "slices": [], "slice_accuracy": []}
    old = dict(zip(parent["batches"], zip(*parent["accuracy"]))) if parent["rows"] else {}
    batches = list(batch_ids)
    accuracy = [[old.get(b, (None,) * len(parent["rows"]))[i] for b in batches] for i in range(len(parent["rows"]))]
    if champion is not None and accuracy and batch_id in batches:
        accuracy[-1][batches.index(batch_id)] = _accuracies(champion, "batches", metric).get(batch_id)
    cand = _accuracies(candidate, "batches", metric)
    accuracy.append([cand.get(b) for b in batches])

    cand_slices = _accuracies(candidate, "slices", metric)
    slices = list(dict.fromkeys([*parent["slices"], *sorted(cand_slices)]))
    old_s = dict(zip(parent["slices"], zip(*parent["slice_accuracy"]))) if parent["rows"] else {}
    slice_accuracy = [[old_s.get(s, (None,) * len(parent["rows"]))[i] for s in slices] for i in range(len(parent["rows"]))]
    slice_accuracy.append([cand_slices.get(s) for s in slices])

    rows = [dict(r) for r in parent["rows"]]
    if rows and rows[-1].get("version") is None:
        rows[-1]["version"] = parent_version
    rows.append({"version": None, "batch_id": batch_id})
    return {"batches": batches, "rows": rows, "accuracy": accuracy, "slices": slices, "slice_accuracy": slice_accuracy,
            "metric": metric}


def stamp(record: dict, version: str) -> dict:
    """Name the record's newest row once the registry has numbered the version."""
    rows = [dict(r) for r in record.get("rows", [])]
    if rows and rows[-1].get("version") is None:
        rows[-1]["version"] = version
    return {**record, "rows": rows}


def square(record: dict) -> list[list[float | None]]:
    """The T x T matrix the definitions above expect: for each batch (column order), the
    most recent row that learned it. Equal to record["accuracy"] unless a batch was learned
    twice."""
    learner = {r["batch_id"]: i for i, r in enumerate(record["rows"])}
    order = [learner[b] for b in record["batches"] if b in learner]
    cols = [record["batches"].index(b) for b in record["batches"] if b in learner]
    return [[record["accuracy"][i][j] for j in cols] for i in order]


def summary(record: dict | None) -> dict[str, Any] | None:
    """BWT, forgetting per batch and per slice, and their means, for the last row."""
    if not record or not record.get("rows"):
        return None
    sq = square(record)
    learned = [b for b in record["batches"] if b in {r["batch_id"] for r in record["rows"]}]
    per_batch = dict(zip(learned[:-1], forgetting(sq)))
    per_slice = dict(zip(record["slices"], column_forgetting(record["slice_accuracy"])))
    return {"bwt": bwt(sq), "average_forgetting": average_forgetting(sq), "forgetting": per_batch,
            "slice_forgetting": {k: v for k, v in per_slice.items() if v is not None}}
