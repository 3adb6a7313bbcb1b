"""Exam answers: what each version answered on every held-out row it was examined on.

Written into the candidate directory before it is registered, so the version's
integrity manifest covers it. The gate's cumulative floor reads them back: each old
slice is compared, row by row, with the best version of production's lineage on it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

ANSWERS_FILE = "exam_answers.parquet"


OUTCOMES = ("correct", "tp", "fp", "fn")  # what the built-in task types' statistics read


def write_answers(model_dir: str | Path, sheets: dict, columns: tuple[str, ...] = OUTCOMES) -> Path:
    """The per-row outcomes of a score sheet: key, the predicted answer, correct (1/0) and
    the columns the task type's statistic reads (`columns`: a tagger's tp/fp/fn)."""
    rows = sheets["rows"]
    path = Path(model_dir) / ANSWERS_FILE
    table = pd.DataFrame({"key": pd.Series(rows["key"], dtype=str), "pred": pd.Series(rows["pred"], dtype=str)})
    for column in dict.fromkeys(("correct", *columns)):
        if column in rows:
            table[column] = pd.Series(rows[column]).astype("int32")
    table.to_parquet(path, index=False)
    return path


def read_answers(model_dir: str | Path) -> pd.DataFrame | None:
    """The outcome columns per row key, or None for a version stored before answers were kept."""
    path = Path(model_dir) / ANSWERS_FILE
    if not path.exists():
        return None
    frame = pd.read_parquet(path)
    outcomes = [c for c in frame.columns if c not in ("key", "pred")]  # correct and the statistic's columns
    return frame.set_index(frame["key"].astype(str))[outcomes].astype(int)


def lineage_answers(reg, version: str | None) -> dict[str, pd.DataFrame]:
    """{version: answers} for `version` and its ancestors that kept their answers, oldest first."""
    if not version:
        return {}
    out = {}
    for entry in reversed(reg.lineage(version)):
        answers = read_answers(reg.path(entry["version"]))
        if answers is not None:
            out[entry["version"]] = answers
    return out
