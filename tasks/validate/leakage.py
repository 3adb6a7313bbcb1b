"""Leakage: rows that would let the exam be learned, found before the batch is split.

The exam (data/exam/*.parquet) is the held-out rows of every accepted batch; a model
must never train on them, and a held-out row the model already trained on says nothing.
So, with texts compared after normalising case and spacing:
- a training row whose text is already in the exam is never used to train;
- a held-out row whose text is already in an accepted batch's training rows is kept out
  of the exam;
- a training row whose text is also a held-out row of this same batch is never used to
  train (the held-out copy stays in the exam).
Such rows are reported as warnings (they are not the data team's fault) and removed
from the batch before it is split; their counts go in the decision JSON.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from tasks.validate.contract import Check, Context, normalise_all
from tasks.intake.batch import DEV_NAMES, TEST_NAMES, TRAIN_NAMES, assign_split

KINDS = {
    "train_rows_in_exam": "training row(s) whose text is already in the held-out exam; not used to train",
    "heldout_rows_in_past_train": "held-out row(s) whose text an accepted batch already trained on; "
                                  "kept out of the exam",
    "train_rows_in_own_heldout": "training row(s) whose text is also a held-out row of this batch; "
                                 "not used to train",
}


@dataclass(frozen=True)
class Leakage:
    """Positions (0-based rows of the batch) of each kind of leak."""

    found: dict[str, list[int]]

    def counts(self) -> dict[str, int]:
        return {kind: len(self.found.get(kind, [])) for kind in KINDS}

    def positions(self) -> set[int]:
        return {p for rows in self.found.values() for p in rows}

    def checks(self) -> list[Check]:
        return [Check(f"no_leakage_{kind}", "text", rows, f"{len(rows)} {KINDS[kind]}", "row", "warn")
                for kind, rows in self.found.items() if rows]


def leak_masks(key: pd.Series, split: pd.Series, exam: set[str], trained: set[str]) -> dict[str, pd.Series]:
    """The leakage rules, for every task type: `key` is each row's normalised leakage key
    (the text; a tagger's sentence), `split` where it goes, `exam` the keys of the exam's
    rows and `trained` those of past training rows. One boolean mask per kind of leak."""
    train = split.isin(TRAIN_NAMES | DEV_NAMES)
    test = split.isin(TEST_NAMES)
    found = {"train_rows_in_exam": train & key.isin(exam), "heldout_rows_in_past_train": test & key.isin(trained)}
    found["train_rows_in_own_heldout"] = train & ~found["train_rows_in_exam"] & key.isin(set(key[test]))
    return found


def find_leakage(good: pd.DataFrame, ctx: Context) -> Leakage:
    """Leaks among `good` (usable rows of the batch, indexed by position)."""
    if good.empty:
        return Leakage({})
    found = leak_masks(normalise_all(good["text"]), assign_split(good, ctx.test_share), ctx.exam_texts,
                       ctx.past_train_texts)
    return Leakage({kind: sorted(int(i) for i in good.index[mask]) for kind, mask in found.items() if mask.any()})
