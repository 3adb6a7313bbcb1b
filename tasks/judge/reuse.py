"""Reused answers: the champion answers only the exam rows it has not answered yet.

Each promoted version stores its answer to every exam row it was examined on as the
candidate (tasks/judge/answers.py), with the row's key (batch id and position in that
batch's held-out file) and a hash of the row's content; the store is sealed with the
version (its integrity manifest). Examined again as the champion, it is given its stored
answers on the exam rows whose key and content match, the model answers the rest
(normally the new batch's held-out rows and pending ones), and the task type scores all
of them as one evaluation (`TaskKind.evaluate`'s `known`): the same sheets as answering
every row again. Every row is answered again, and the reason recorded, when the store
is missing (a version from before answers were kept), lacks a column the gate reads or
the content hash, holds a row whose content differs from the exam's, or when scoring the
reused answers does not give back the outcomes stored with them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import pandas as pd

from tasks.judge.answers import CONTENT, read_stored, row_content
from tasks.judge.evaluate import row_keys


@dataclass(frozen=True)
class Reuse:
    """How a model's sheets were made: rows answered from its store, rows it answered now."""

    reused: int
    computed: int
    recomputed_because: str | None = None  # why the store was not used, None when it was (or not asked)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        said = f"reused {self.reused} rows, computed {self.computed}"
        return said + (f" (every row answered again: {self.recomputed_because})" if self.recomputed_because else "")


def known_answers(stored: pd.DataFrame | None, keys: list[str], content: list[str],
                  needed: tuple[str, ...]) -> tuple[dict[int, str], str | None]:
    """({exam position: stored answer} for the rows the store answered, None) or ({}, why not)."""
    if stored is None:
        return {}, "no stored answers (a version from before they were kept)"
    missing = sorted({"key", "pred", CONTENT, *needed} - set(stored.columns))
    if missing:
        return {}, f"the stored answers lack {', '.join(missing)}"
    table = stored.set_index(stored["key"].astype(str))
    if table.index.has_duplicates:
        return {}, "the stored answers repeat a row key"
    got = table.reindex(keys)
    answered = got["pred"].notna().to_numpy()
    changed = answered & (got[CONTENT].astype(str).to_numpy() != pd.Series(content, dtype=str).to_numpy())
    if changed.any():
        first = keys[int(changed.argmax())]
        return {}, (f"{int(changed.sum())} exam rows (first {first}) differ from the rows "
                    "the stored answers were given on")
    return {i: str(p) for i, p in enumerate(got["pred"]) if answered[i]}, None


def disagreement(stored: pd.DataFrame, rows: dict, known: dict[int, str], needed: tuple[str, ...]) -> str | None:
    """Why the outcomes scored from the reused answers differ from those stored with them, else None."""
    table = stored.set_index(stored["key"].astype(str))
    at = sorted(known)
    keys = [rows["key"][i] for i in at]
    for column in needed:
        scored = pd.Series([rows[column][i] for i in at], index=keys).astype(int)
        if not scored.equals(table.loc[keys, column].astype(int)):
            return f"the stored {column} of some rows is not what their stored answers score"
    return None


def examine(kind, model_dir, exam: pd.DataFrame, new_ids: list[str], params, reuse: bool = False,
            answer: Callable[[pd.DataFrame], list[str]] | None = None) -> tuple[dict, Reuse]:
    """The task type's score sheets for the model at `model_dir` on `exam`, each row's
    content hash added to "rows" (stored with a promoted version), and how they were made.
    `reuse`: answer rows from the answers stored in `model_dir` where they are sound.
    `answer(rows)`: the model's answers ("pred") on those exam rows, computed elsewhere
    (the exam on Dask, flows/exam_dask.py); the kind then only scores."""
    exam = exam.reset_index(drop=True)
    content = row_content(exam)

    def with_answers(known: dict[int, str]) -> dict[int, str] | None:
        todo = [i for i in range(len(exam)) if i not in known]
        if answer is None or model_dir is None or not todo:
            return known or None
        return {**known, **dict(zip(todo, answer(exam.iloc[todo])))}

    why = None if reuse else "not asked (evaluate.reuse_answers: false)"
    if reuse and model_dir is not None:
        needed = tuple(dict.fromkeys(("correct", *kind.statistic(params.gate).columns)))
        stored = read_stored(model_dir)
        known, why = known_answers(stored, row_keys(exam), content, needed)
        if known:
            sheets = kind.evaluate(model_dir, exam, new_ids, params, with_answers(known))
            why = disagreement(stored, sheets["rows"], known, needed)
            if why is None:
                return _with_content(sheets, content), Reuse(len(known), len(exam) - len(known))
    sheets = kind.evaluate(model_dir, exam, new_ids, params, with_answers({}))
    return _with_content(sheets, content), Reuse(0, len(exam), why)


def _with_content(sheets: dict, content: list[str]) -> dict:
    sheets["rows"][CONTENT] = content
    return sheets
