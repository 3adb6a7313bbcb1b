"""Exam answers: what each version answered on every held-out row it was examined on.

Written into the candidate directory before it is registered, so the version's
integrity manifest covers it. The gate's cumulative floor reads them back: each old
slice is compared, row by row, with the best version of production's lineage on it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

ANSWERS_FILE = "exam_answers.parquet"


def write_answers(model_dir: str | Path, sheets: dict) -> Path:
    """The per-row outcomes of an `evaluate` result (key, predicted label, correct)."""
    rows = sheets["rows"]
    path = Path(model_dir) / ANSWERS_FILE
    pd.DataFrame({"key": rows["key"], "pred": rows["pred"], "correct": rows["correct"]}).astype(
        {"key": str, "pred": str, "correct": "int8"}).to_parquet(path, index=False)
    return path


def read_answers(model_dir: str | Path) -> pd.Series | None:
    """1/0 per row key, or None for a version stored before answers were kept."""
    path = Path(model_dir) / ANSWERS_FILE
    if not path.exists():
        return None
    frame = pd.read_parquet(path, columns=["key", "correct"])
    return pd.Series(frame["correct"].astype(int).to_numpy(), index=frame["key"].astype(str))


def lineage_answers(reg, version: str | None) -> dict[str, pd.Series]:
    """{version: answers} for `version` and its ancestors that kept their answers, oldest first."""
    if not version:
        return {}
    out = {}
    for entry in reversed(reg.lineage(version)):
        answers = read_answers(reg.path(entry["version"]))
        if answers is not None:
            out[entry["version"]] = answers
    return out
