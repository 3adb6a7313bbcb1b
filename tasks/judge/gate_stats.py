"""Gate statistics: an exact-variance paired non-inferiority test on per-row outcomes.

Candidate and reference (the champion, or the lineage's best version for the floor)
answered the same held-out rows, so only the discordant rows carry information:
b = rows the reference got right and the candidate wrong (negative flips), c = the
reverse (positive flips). The accuracy difference is (c - b) / n.

`score_test` is Tango's score test (Tango 1998, Stat Med 17:891) of H0: difference <=
-margin, a closed form with the variance estimated under H0 (the restricted MLE), so
it keeps its level on a 40-row slice where a bootstrap of the mean does not, and with
no flips at all it still says how much n rows can prove. At margin 0 it is McNemar's.

`detectable_margin` turns the test around for planning: the smallest margin this many
rows can defend with the wanted power when the candidate is truly unchanged. The gate
judges a slice at max(tolerance, that margin) and reports "low power" when it had to
widen it: a 40-row slice can rule out a 15-point collapse, not a 5-point dip.
All functions are pure and vectorised enough for the operating-characteristic
simulation in benchmarks/gate_oc.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm


@dataclass(frozen=True)
class Paired:
    """Counts of one paired comparison."""

    n: int
    neg: int   # reference right, candidate wrong
    pos: int   # reference wrong, candidate right

    @classmethod
    def of(cls, cand: np.ndarray, ref: np.ndarray) -> "Paired":
        cand, ref = np.asarray(cand, dtype=bool), np.asarray(ref, dtype=bool)
        return cls(int(cand.size), int(np.count_nonzero(ref & ~cand)), int(np.count_nonzero(~ref & cand)))

    @property
    def diff(self) -> float:
        return (self.pos - self.neg) / self.n if self.n else 0.0

    @property
    def discordance(self) -> float:
        return (self.pos + self.neg) / self.n if self.n else 0.0


def _restricted_q(n: int, neg: int, pos: int, delta0: float) -> float:
    """MLE of P(reference right, candidate wrong) under difference = delta0 (Tango's q21)."""
    a = 2.0 * n
    b = -pos - neg + (2.0 * n - pos + neg) * delta0
    c = -neg * delta0 * (1.0 - delta0)
    return (math.sqrt(max(b * b - 4.0 * a * c, 0.0)) - b) / (2.0 * a)


def score_z(p: Paired, margin: float) -> float:
    """Tango's Z for H0: difference = -margin (large Z: the candidate is not worse by margin)."""
    d0 = -margin
    q = _restricted_q(p.n, p.neg, p.pos, d0)
    var = p.n * (2.0 * q + d0 * (1.0 - d0))
    num = p.pos - p.neg - p.n * d0
    if var <= 0:
        return math.inf if num > 0 else (0.0 if num == 0 else -math.inf)
    return num / math.sqrt(var)


def score_test(p: Paired, margin: float) -> float:
    """One-sided p-value of H0: candidate - reference <= -margin."""
    if p.n == 0:
        return 1.0
    return float(norm.sf(score_z(p, margin)))


def lower_bound(p: Paired, alpha: float) -> float:
    """The (1 - alpha) one-sided lower confidence bound on the difference: the -margin
    at which the score test's p crosses alpha (bisection; Z falls as the margin shrinks)."""
    if p.n == 0:
        return -1.0
    z = norm.isf(alpha)
    lo, hi = -1.0 + 1e-9, min(p.diff, 1.0 - 1e-9)  # bound on the difference, in [-1, diff]
    if score_z(p, -lo) < z:
        return -1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if score_z(p, -mid) >= z:  # a difference of `mid` is still ruled out from below
            lo = mid
        else:
            hi = mid
    return lo


def detectable_margin(n: int, discordance: float, *, alpha: float, beta: float, floor: float) -> float:
    """Smallest margin >= floor that n paired rows defend with power 1 - beta when the
    candidate is truly unchanged and differs from the reference on `discordance` of rows
    (expected counts, normal approximation of the score statistic)."""
    if n <= 0:
        return 1.0
    z_a, z_b = norm.isf(alpha), norm.isf(beta)
    half = 0.5 * discordance * n

    def power_z(m: float) -> float:
        q = _restricted_q(n, half, half, -m)
        var0 = n * (2.0 * q - m * (1.0 + m))
        sd1 = math.sqrt(max(n * discordance, 1e-12))
        return (n * m - z_a * math.sqrt(max(var0, 0.0))) / sd1

    if power_z(floor) >= z_b:
        return floor
    lo, hi = floor, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if power_z(mid) >= z_b:
            hi = mid
        else:
            lo = mid
    return hi


# --- The statistic a task type is gated on ---------------------------------------------
# The gate (tasks/judge/gate.py) is written once; what differs between task types is only how
# a row's outcome becomes a score and how two models' paired outcomes are tested. A task
# type (tasks/kinds/) names its statistic; the rows of its score sheet carry the columns
# the statistic reads, and `correct` (1/0: the row answered exactly right) for flips.


@dataclass(frozen=True)
class Accuracy:
    """Share of rows answered right; Tango's score test with planned power."""

    name: str = "accuracy"
    label: str = ""  # shown after the new batch's check name; the default statistic needs none
    columns: tuple[str, ...] = ("correct",)
    planned: bool = True  # the margin is widened to what the rows can detect

    def values(self, table) -> np.ndarray:
        return np.asarray(table["correct"], dtype=int)

    def score(self, values: np.ndarray) -> float:
        return float(values.mean()) if values.size else 0.0

    def test(self, cand: np.ndarray, ref: np.ndarray, margin: float, alpha: float, seed: int) -> tuple[float, float]:
        """(lower confidence bound on cand - ref, p of "worse by more than margin")."""
        counts = Paired.of(cand, ref)
        return lower_bound(counts, alpha), score_test(counts, margin)


def f1_of(counts: np.ndarray) -> np.ndarray:
    """Micro F1 from summed (tp, fp, fn) along the last axis."""
    counts = np.asarray(counts, dtype=float)
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(denom), where=denom > 0)


@dataclass(frozen=True)
class EntityF1:
    """Entity micro F1 from per-row (tp, fp, fn) counts, summed: F1 is not a mean over
    rows, so the paired test is a bootstrap that resamples rows (the same ones for both
    models) and recomputes both F1s from their summed counts. Judged at the configured
    margin (no closed form to plan its power from)."""

    name: str = "f1"
    label: str = "entity F1"
    columns: tuple[str, ...] = ("tp", "fp", "fn")
    planned: bool = False
    n_resamples: int = 2000

    def values(self, table) -> np.ndarray:
        return np.column_stack([np.asarray(table[c], dtype=float) for c in self.columns]).reshape(-1, 3)

    def score(self, values: np.ndarray) -> float:
        return float(f1_of(values.sum(0))) if len(values) else 0.0

    def test(self, cand: np.ndarray, ref: np.ndarray, margin: float, alpha: float, seed: int) -> tuple[float, float]:
        rng = np.random.default_rng(seed)
        n, diffs = len(cand), []
        for start in range(0, self.n_resamples, 256):  # chunks keep the index matrix small
            idx = rng.integers(0, n, size=(min(256, self.n_resamples - start), n))
            diffs.append(f1_of(cand[idx].sum(1)) - f1_of(ref[idx].sum(1)))
        dist = np.concatenate(diffs)
        if np.all(dist == dist[0]):
            return float(dist[0]), 0.0 if dist[0] > -margin else 1.0
        p_value = (np.count_nonzero(dist <= -margin) + 1) / (dist.size + 1)
        return float(np.quantile(dist, alpha)), float(p_value)
