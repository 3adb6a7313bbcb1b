"""A third task type, registered only by the tests: "does this text contain a digit?"

It exists to prove that a plug-in (tasks/kinds/base.py `TaskKind`) is all a new task
type needs: tests/flows/test_conformance.py registers it under `task.type: toy` and runs
it through the whole retrain flow beside the built-in kinds. It is honest about what it
borrows: the model is a sentence classifier, so it reuses the classification kind's
training, validation, leakage split, drift signals, smoke test and exam predictions.
What is its own:

- **parse**: deliveries are fastText-style lines, `__label__digit __slice__A some words 7`
  (`__label__` required; optional `__slice__` and `__split__` fields), not a CSV table;
- **metric**: `balanced_accuracy`, the mean of the two classes' recalls (a detector
  that answers "none" to everything scores 0.5, not the share of negatives);
- **statistic**: `BalancedAccuracy`, a paired bootstrap of the balanced-accuracy
  difference on per-row `correct` and `positive` (the gold class) outcomes: balanced
  accuracy is not a mean over rows, so Tango's closed-form test does not apply.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.core.config import GateConfig, Params
from tasks.kinds.classification import Classification


POSITIVE, NEGATIVE = "digit", "none"
FIELDS = ("label", "slice", "split")


def parse_lines(raw: bytes, name: str, encoding: str) -> pd.DataFrame:
    """Rows `text, label[, slice][, split]` of a fastText-style file; a line without a
    `__label__` field (or with an unknown `__field__`) is an error naming the line."""
    text = raw.decode("utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding)
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        words, fields = line.split(), {}
        while words and words[0].startswith("__") and "__" in words[0][2:]:
            key, _, value = words.pop(0)[2:].partition("__")
            if key not in FIELDS or not value:
                raise ValueError(f"line {number}: unknown field __{key}__ (known: {', '.join(FIELDS)})")
            fields[key] = value
        if not line.strip():
            raise ValueError(f"line {number} is empty; expected '__label__LABEL text'")
        if "label" not in fields:
            raise ValueError(f"line {number}: no __label__ field; expected '__label__LABEL text'")
        rows.append({"text": " ".join(words), **fields})
    if not rows:
        raise ValueError("no rows: expected lines of '__label__LABEL text'")
    return pd.DataFrame(rows)


def write_lines(frame: pd.DataFrame) -> bytes:
    """The inverse of `parse_lines`."""
    fields = [c for c in FIELDS if c in frame.columns]
    return "".join(" ".join([*(f"__{c}__{row[c]}" for c in fields), row["text"]]) + "\n"
                   for _, row in frame.iterrows()).encode()


def _balanced(stack: np.ndarray) -> np.ndarray:
    """Balanced accuracy of (..., rows, [correct, positive]) stacks: the mean recall of
    the classes present."""
    correct, positive = stack[..., 0], stack[..., 1]
    negative = 1.0 - positive
    n_pos, n_neg = positive.sum(-1), negative.sum(-1)
    recall_pos = np.divide((correct * positive).sum(-1), n_pos, out=np.zeros_like(n_pos), where=n_pos > 0)
    recall_neg = np.divide((correct * negative).sum(-1), n_neg, out=np.zeros_like(n_neg), where=n_neg > 0)
    classes = (n_pos > 0).astype(float) + (n_neg > 0)
    return np.divide(recall_pos + recall_neg, classes, out=np.zeros_like(classes), where=classes > 0)


@dataclass(frozen=True)
class BalancedAccuracy:
    """Mean per-class recall from per-row (correct, positive); a paired bootstrap that
    resamples rows (the same ones for both models), judged at the configured margin."""

    name: str = "balanced_accuracy"
    label: str = "balanced accuracy"
    columns: tuple[str, ...] = ("correct", "positive")
    planned: bool = False
    n_resamples: int = 2000

    def values(self, table) -> np.ndarray:
        return np.column_stack([np.asarray(table[c], dtype=float) for c in self.columns]).reshape(-1, 2)

    def score(self, values: np.ndarray) -> float:
        return float(_balanced(np.asarray(values, dtype=float))) if len(values) else 0.0

    def test(self, cand: np.ndarray, ref: np.ndarray, margin: float, alpha: float, seed: int) -> tuple[float, float]:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(cand), size=(self.n_resamples, len(cand)))
        dist = _balanced(cand[idx]) - _balanced(ref[idx])
        if np.all(dist == dist[0]):
            return float(dist[0]), 0.0 if dist[0] > -margin else 1.0
        return float(np.quantile(dist, alpha)), float((np.count_nonzero(dist <= -margin) + 1) / (dist.size + 1))


@dataclass(frozen=True)
class Toy(Classification):
    name: str = "toy"
    metric: str = "balanced_accuracy"

    def parse(self, raw: bytes, name: str, encoding: str) -> pd.DataFrame | None:
        return parse_lines(raw, name, encoding)

    def evaluate(self, model_dir: Path | None, exam: pd.DataFrame, new_ids: list[str], params: Params,
                 known: dict[int, str] | None = None) -> dict:
        """The classifier's sheets (accuracy, macro-F1, per label) with balanced accuracy
        added to every overall, slice and batch score, and `positive` to the rows."""
        sheets = super().evaluate(model_dir, exam, new_ids, params, known)
        exam = exam.reset_index(drop=True)
        rows = sheets["rows"]
        rows["positive"] = (exam["label"].astype(str) == POSITIVE).astype(int).tolist()
        stat, values = BalancedAccuracy(), BalancedAccuracy().values(rows)
        is_new = np.asarray(rows["is_new"], dtype=bool)
        for part, mask in (("all", np.ones_like(is_new)), ("old", ~is_new), ("new", is_new)):
            sheet = sheets[part]
            if sheet is None:
                continue
            sub, got = exam[mask].reset_index(drop=True), values[mask]
            sheet["overall"][self.metric] = round(stat.score(got), 4)
            for key, column in (("slices", "slice"), ("batches", "batch_id")):
                for group, at in sub.groupby(column, sort=True).indices.items():
                    sheet[key][str(group)][self.metric] = round(stat.score(got[at]), 4)
        return sheets

    def statistic(self, cfg: GateConfig) -> BalancedAccuracy:
        return BalancedAccuracy(n_resamples=cfg.n_resamples)

    # `ratchet validate FILE` / `ratchet drift FILE`: the classification kind's versions read
    # the file with the CSV/JSONL/Parquet table parser, not with `parse`, so a kind with a
    # parser of its own writes both again (docs/architecture.md, "Adding a task type").


TOY = Toy()  # registered by the tests that use it (tasks.kinds.register), never at import


# --- deliveries -------------------------------------------------------------------------
DOMAINS = {
    "home": "sofa kitchen garden lamp window door table chair carpet roof".split(),
    "office": "desk meeting email printer report manager budget memo laptop folder".split(),
    "sea": "boat wave harbour sailor island anchor shell beach tide gull".split(),
    "farm": "tractor barn cow field hay goat fence wheat orchard plough".split(),
}
FILLER = "the a my our big old new red small with near under".split()


def toy_digit_frame(domain: str, *, rows: int = 60, seed: int = 0, slice_name: str | None = None,
                    test_share: float = 0.3) -> pd.DataFrame:
    """Rows `text,label[,slice],split`: words of one domain, half of them with a single
    digit among the words (label `digit`, else `none`); texts are unique."""
    rng = np.random.default_rng(seed)
    words, out, seen = DOMAINS[domain] + FILLER, [], set()
    while len(out) < rows:
        i = len(out)
        text = list(rng.choice(words, size=int(rng.integers(4, 8))))
        label = POSITIVE if i % 2 == 0 else NEGATIVE
        if label == POSITIVE:
            text.insert(int(rng.integers(0, len(text) + 1)), str(int(rng.integers(0, 10))))
        text = " ".join(text)
        if text in seen:
            continue
        seen.add(text)
        out.append({"text": text, "label": label, "split": "test" if i < rows * test_share else "train"})
    frame = pd.DataFrame(out)
    if slice_name:
        frame.insert(2, "slice", slice_name)
    return frame
