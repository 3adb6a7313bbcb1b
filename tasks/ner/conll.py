"""NER intake formats: the CoNLL column format and NER batch files (tokens, tags).

A NER batch is one row per sentence with list columns `tokens` and `tags` (IOB2), in
JSONL or Parquet, plus the optional `slice`, `split` and `id` of the batch contract.
The CoNLL column format (one token per line, the token first and the tag last, blank
lines between sentences, `-DOCSTART-` lines between documents) is converted to JSONL
by `ratchet convert conll FILE`; intake also reads it directly (`.conll`, `.txt`), so a
delivered CoNLL file is kept byte for byte like any other batch.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd

CONLL_SUFFIXES = {".conll", ".txt", ".iob", ".bio"}


class ConllError(ValueError):
    """A CoNLL file that cannot be read; the message names the line."""


def read_conll(text: str) -> pd.DataFrame:
    """Sentences of a CoNLL column file as a frame with `tokens` and `tags` (and `line`,
    the 1-based line of each sentence's first token). Columns are split on whitespace;
    the first is the token and the last the tag, so `token POS chunk NER` (CoNLL-2003)
    and `token TAG` both work."""
    rows, tokens, tags, first = [], [], [], 0
    for number, line in enumerate(io.StringIO(text), start=1):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if tokens:
                rows.append({"tokens": tokens, "tags": tags, "line": first})
            tokens, tags = [], []
            continue
        if len(parts) < 2:
            raise ConllError(f"conll: line {number} has one column ({line.strip()!r}); expected 'token ... TAG'")
        if not tokens:
            first = number
        tokens.append(parts[0])
        tags.append(parts[-1])
    if tokens:
        rows.append({"tokens": tokens, "tags": tags, "line": first})
    return pd.DataFrame(rows, columns=["tokens", "tags", "line"])


def write_conll(frame: pd.DataFrame) -> str:
    """The inverse of `read_conll` for two columns (token TAG)."""
    blocks = ["\n".join(f"{tok} {tag}" for tok, tag in zip(t, g)) for t, g in zip(frame["tokens"], frame["tags"])]
    return "\n\n".join(blocks) + "\n"


def to_jsonl(frame: pd.DataFrame) -> str:
    """One JSON object per sentence: tokens, tags and any contract columns present."""
    keep = [c for c in ("id", "tokens", "tags", "slice", "split") if c in frame.columns]
    return "".join(json.dumps({c: _plain(row[c]) for c in keep}) + "\n" for _, row in frame.iterrows())


def _plain(value):
    return list(value) if hasattr(value, "__len__") and not isinstance(value, str) else value


def convert_conll(path: str | Path, out: str | Path | None = None, *, slice_name: str | None = None,
                  split: str | None = None, encoding: str = "utf-8") -> Path:
    """`ratchet convert conll FILE`: FILE.jsonl next to FILE (or `out`)."""
    path = Path(path)
    frame = read_conll(path.read_text(encoding=encoding)).drop(columns="line")
    if slice_name:
        frame["slice"] = slice_name
    if split:
        frame["split"] = split
    out = Path(out) if out else path.with_suffix(".jsonl")
    out.write_text(to_jsonl(frame), encoding="utf-8")
    return out


def parse_ner_bytes(raw: bytes, name: str, encoding: str = "utf-8") -> pd.DataFrame:
    """A delivered NER batch (JSONL, Parquet or CoNLL) as a frame with list columns.
    Raises ValueError with a clear message; list cells are plain Python lists."""
    suffix = Path(name).suffix.lower()
    if suffix == ".parquet":
        frame = pd.read_parquet(io.BytesIO(raw))
    elif suffix in (".jsonl", ".json", ".ndjson"):
        text = raw.decode("utf-8-sig" if encoding.lower().replace("_", "-") == "utf-8" else encoding)
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"line {number} is not JSON: {exc.msg}") from None
            if not isinstance(record, dict):
                raise ValueError(f"line {number} is not a JSON object")
            records.append(record)
        frame = pd.DataFrame.from_records(records)
    elif suffix in CONLL_SUFFIXES:
        frame = read_conll(raw.decode(encoding)).drop(columns="line")
    else:
        raise ValueError(f"unsupported file type {suffix or '(none)'} for a NER batch: use .jsonl, .parquet or .conll")
    missing = [c for c in ("tokens", "tags") if c not in frame.columns]
    if missing:
        raise ValueError(f"missing column(s) {', '.join(missing)}; the file has {', '.join(map(str, frame.columns))}")
    for column in ("tokens", "tags"):
        frame[column] = frame[column].map(lambda v: [str(x) for x in v] if _is_list(v) else v)
    return frame.reset_index(drop=True)


def _is_list(value) -> bool:
    return hasattr(value, "__len__") and not isinstance(value, (str, bytes, dict))
