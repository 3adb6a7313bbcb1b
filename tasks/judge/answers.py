"""Exam answers: what each version answered on every held-out row it was examined on.

Written into the candidate directory before it is registered, so the version's
integrity manifest covers it. The gate's cumulative floor reads them back: each old
slice is compared, row by row, with the best version of production's lineage on it;
and when the version is examined again as the champion, the rows whose key and content
hash match are answered from here (tasks/judge/reuse.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

ANSWERS_FILE = "exam_answers.parquet"
CONTENT = "content"  # a hash of the exam row the answer was given on


OUTCOMES = ("correct", "tp", "fp", "fn")  # what the built-in task types' statistics read


def row_content(exam: pd.DataFrame) -> list[str]:
    """A hash per exam row of everything in it (text and label, or tokens and tags; slice,
    batch id), so a stored answer is reused only on the very row it was given on."""
    columns = sorted(exam.columns)
    plain = lambda v: v.tolist() if hasattr(v, "tolist") else v  # noqa: E731  numpy arrays and scalars
    return [hashlib.sha256(json.dumps(dict(zip(columns, map(plain, row))), default=str).encode()).hexdigest()[:16]
            for row in exam[columns].itertuples(index=False, name=None)]


def write_answers(model_dir: str | Path, sheets: dict, columns: tuple[str, ...] = OUTCOMES) -> Path:
    """The per-row outcomes of a score sheet: key, the predicted answer, the row's content
    hash (when the sheet has it), correct (1/0) and the columns the task type's statistic
    reads (`columns`: a tagger's tp/fp/fn)."""
    rows = sheets["rows"]
    path = Path(model_dir) / ANSWERS_FILE
    table = pd.DataFrame({"key": pd.Series(rows["key"], dtype=str), "pred": pd.Series(rows["pred"], dtype=str)})
    if CONTENT in rows:
        table[CONTENT] = pd.Series(rows[CONTENT], dtype=str)
    for column in dict.fromkeys(("correct", *columns)):
        if column in rows:
            table[column] = pd.Series(rows[column]).astype("int32")
    table.to_parquet(path, index=False)
    return path


def read_stored(model_dir: str | Path) -> pd.DataFrame | None:
    """The stored table as written (key, pred, content, outcomes), or None for a version
    stored before answers were kept."""
    path = Path(model_dir) / ANSWERS_FILE
    return pd.read_parquet(path) if path.exists() else None


def read_answers(model_dir: str | Path) -> pd.DataFrame | None:
    """The outcome columns per row key, or None for a version stored before answers were kept."""
    frame = read_stored(model_dir)
    if frame is None:
        return None
    outcomes = [c for c in frame.columns if c not in ("key", "pred", CONTENT)]  # correct and the statistic's
    return frame.set_index(frame["key"].astype(str))[outcomes].astype(int)


def lineage_labels(reg, versions) -> dict[str, list[str]]:
    """{version: the labels it knew} for `versions`, as recorded at registration (the gate's
    floor tells forgetting from confusion with labels learned later by them)."""
    return {v: reg.metadata(v).get("labels") or [] for v in versions}


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
