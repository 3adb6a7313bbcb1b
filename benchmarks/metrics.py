"""Continual-learning metrics over an accuracy matrix.

`matrix[i][j]` is the accuracy, after batch i, on batch j's held-out rows (a fraction).
Definitions follow Lopez-Paz & Ranzato (2017) for ACC and BWT and Chaudhry et al. (2018)
for forgetting:

- ACC  = mean_j R[T-1, j]: what the final model knows about every batch;
- BWT  = mean_{j<T-1} (R[T-1, j] - R[j, j]): how much learning later batches changed
  earlier ones (negative = forgetting);
- forgetting of batch j = max_{l<T-1} R[l, j] - R[T-1, j]; `max_forgetting` is the worst
  batch's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StreamScores:
    acc: float
    bwt: float | None
    max_forgetting: float | None


def _r(x: float) -> float:
    return round(float(x), 4)


def stream_scores(matrix: list[list[float]]) -> StreamScores:
    """ACC, BWT and max forgetting of a square T x T matrix (BWT and forgetting are None
    for a single batch: there is nothing earlier to forget)."""
    r = np.asarray(matrix, dtype=float)
    if r.ndim != 2 or r.shape[0] != r.shape[1] or r.shape[0] == 0:
        raise ValueError(f"accuracy matrix must be square and non-empty, got shape {r.shape}")
    t = r.shape[0]
    acc = r[-1].mean()
    if t == 1:
        return StreamScores(_r(acc), None, None)
    earlier = np.arange(t - 1)
    bwt = (r[-1, earlier] - r[earlier, earlier]).mean()
    forgetting = r[:-1, earlier].max(axis=0) - r[-1, earlier]
    return StreamScores(_r(acc), _r(bwt), _r(forgetting.max()))


def seen_acc_curve(matrix: list[list[float]]) -> list[float]:
    """After each batch i, the mean accuracy over batches 0..i (the usual plot)."""
    r = np.asarray(matrix, dtype=float)
    return [_r(r[i, : i + 1].mean()) for i in range(r.shape[0])]
