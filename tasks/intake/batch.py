"""Intake: the first stop of a batch.

A delivered file (CSV, JSONL or Parquet) gets a content-hash id, its raw bytes are kept
verbatim under data/batches/<id>/raw/, and it is parsed into a table. Parsing never
judges the content: a file that cannot be parsed still gets an id and is handed to
validation as a failure, so the flow can quarantine it byte-for-byte.

After validation passes, `split_batch` separates training rows from held-out rows
(the batch's `split` column when present, else a stable hash of the text) and the
held-out rows join the exam under data/exam/<id>.parquet. Training never sees them.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from tasks.core.config import ValidateConfig
from tasks.intake.parsing import SUPPORTED, decompress, is_supported, parse_table  # noqa: F401  (intake's API)
from tasks.core.storage import read_bytes, sha256_of, size_of
from tasks.core.workspace import Workspace

TRAIN_NAMES = {"train", "training"}
DEV_NAMES = {"dev", "val", "valid", "validation"}
TEST_NAMES = {"test", "holdout", "held-out", "heldout", "eval"}
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class Intake:
    """A delivered batch: its id, where its raw bytes are kept, and its parsed table
    (None with `parse_error` set when the file could not be read). `rows` holds each
    table row's 1-based row number in the file; `malformed` the rows that could not be
    read (position -> why)."""

    batch_id: str
    raw_path: Path
    frame: pd.DataFrame | None
    parse_error: str | None = None
    rows: list[int] | None = None
    malformed: dict[int, str] = field(default_factory=dict)
    too_large: str | None = None  # over intake.max_bytes: never read, nothing kept but the id


def size_problem(size: int, max_bytes: int) -> str | None:
    """Why a file of `size` bytes is refused under `intake.max_bytes` (0 = no limit), or None."""
    if not max_bytes or size <= max_bytes:
        return None
    return (f"file is {size:,} bytes, over intake.max_bytes ({max_bytes:,}); it was not read. "
            "Deliver it as smaller batches, or raise intake.max_bytes in params.yaml")


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    dev: pd.DataFrame
    test: pd.DataFrame


def batch_id_for(raw: bytes) -> str:
    """Content-hash id: the same bytes delivered twice get the same id."""
    return "b-" + hashlib.sha256(raw).hexdigest()[:12]


def parse_bytes(raw: bytes, name: str, encoding: str = "utf-8") -> pd.DataFrame:
    """Parse a batch file's bytes by its extension. Raises ValueError with a clear message."""
    return parse_table(raw, name, encoding).frame


def source_name(source: str | Path) -> str:
    """The file name of a local path or of an s3:// key."""
    return str(source).rstrip("/").rsplit("/", 1)[-1]


def raw_file_name(name: str, batch_id: str) -> str:
    """The name the raw bytes are kept under: the delivered name when it is plainly a
    file name, else one derived from the batch id, so a hostile name never becomes a path."""
    if SAFE_NAME.match(name) and ".." not in name:
        return name
    suffix = Path(name).suffix.lower()
    return batch_id + (suffix if re.fullmatch(r"\.[a-z0-9]{1,10}", suffix) else ".bin")


def batch_id_of(source: str | Path, endpoint_url: str | None = None) -> str:
    """The batch id of a local file or s3:// object, hashed in a streaming pass."""
    return "b-" + sha256_of(source, endpoint_url=endpoint_url)[:12]


def intake(source: str | Path, ws: Workspace, cfg: ValidateConfig | None = None, max_bytes: int = 0,
           parser: Callable[[bytes, str, str], pd.DataFrame] | None = None) -> Intake:
    """Keep the raw bytes (local path or s3:// URI) under data/batches/<id>/raw/ and parse them.
    A file over `max_bytes` (intake.max_bytes) is refused from its size (stat / S3 HEAD)
    before anything reads it into memory: its id comes from a streaming hash, and neither
    its bytes nor a table are kept (`too_large` says why). `parser(raw, name, encoding)`
    replaces the text/label table parser when it returns a table (a task type's own, e.g. NER)."""
    cfg = cfg or ValidateConfig()
    endpoint = cfg.s3_endpoint or None
    too_large = size_problem(size_of(source, endpoint_url=endpoint), max_bytes)
    if too_large:
        batch_id = batch_id_of(source, endpoint)
        ws.batch_dir(batch_id).mkdir(parents=True, exist_ok=True)  # what quarantine moves
        return Intake(batch_id, ws.batch_dir(batch_id) / "raw" / raw_file_name(source_name(source), batch_id),
                      None, too_large=too_large)
    raw = read_bytes(source, endpoint_url=endpoint)
    batch_id = batch_id_for(raw)
    name = source_name(source)
    raw_dir = ws.batch_dir(batch_id) / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    raw_path = raw_dir / raw_file_name(name, batch_id)
    if not raw_path.exists():
        raw_path.write_bytes(raw)
    return parse_delivery(raw, name, cfg.encoding, batch_id, raw_path, parser, max_bytes)


def parse_delivery(raw: bytes, name: str, encoding: str, batch_id: str, raw_path: Path,
                   parser: Callable[[bytes, str, str], pd.DataFrame | None] | None = None,
                   max_bytes: int = 0) -> Intake:
    """The parsed delivery: `parser(raw, name, encoding)` (a task type's own) when it
    returns a table, else the text/label table parser; a compressed file is parsed as the
    file inside (at most `max_bytes` of it). Any parser failure is a validation verdict
    (`parse_error`), not a crash."""
    try:
        raw, name = decompress(raw, name, max_bytes)
        frame = parser(raw, name, encoding) if parser is not None else None
        if frame is not None:
            return Intake(batch_id, raw_path, frame, rows=list(range(1, len(frame) + 1)))
        table = parse_table(raw, name, encoding)
    except Exception as exc:
        return Intake(batch_id, raw_path, None, f"{type(exc).__name__}: {exc}")
    return Intake(batch_id, raw_path, table.frame, rows=table.rows, malformed=table.malformed)


def _hash_is_test(text: str, test_share: float) -> bool:
    bucket = int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:8], 16) % 10_000
    return bucket < test_share * 10_000


def assign_split(frame: pd.DataFrame, test_share: float) -> pd.Series:
    """Where each row goes, lower-cased: the batch's `split` value when it is a known
    name, else train/test by a stable hash of the text."""
    texts = frame["text"].astype(str)
    by_hash = texts.map(lambda t: "test" if _hash_is_test(t, test_share) else "train")
    if "split" not in frame.columns:
        return by_hash
    split = frame["split"].astype(str).str.strip().str.lower()
    return split.where(split.isin(TRAIN_NAMES | DEV_NAMES | TEST_NAMES), by_hash)


def split_batch(frame: pd.DataFrame, batch_id: str, test_share: float) -> Split:
    """Normalise columns and separate train / dev / held-out rows."""
    df = frame.copy()
    split = assign_split(df, test_share)
    df["text"] = df["text"].astype(str)
    df["label"] = df["label"].astype(str)
    df["slice"] = df["slice"].astype(str) if "slice" in df.columns else batch_id
    df["batch_id"] = batch_id
    keep = ["text", "label", "slice", "batch_id"]
    return Split(
        train=df.loc[split.isin(TRAIN_NAMES), keep].reset_index(drop=True),
        dev=df.loc[split.isin(DEV_NAMES), keep].reset_index(drop=True),
        test=df.loc[split.isin(TEST_NAMES), keep].reset_index(drop=True),
    )


def store_split(split: Split, batch_id: str, ws: Workspace, **manifest) -> None:
    """Write the batch's parts and add its held-out rows to the exam; `manifest` adds keys
    to manifest.json (the NER path records its task and leakage counts)."""
    out = ws.batch_dir(batch_id)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("train", "dev", "test"):
        getattr(split, name).to_parquet(out / f"{name}.parquet", index=False)
    ws.exam_dir.mkdir(parents=True, exist_ok=True)
    split.test.to_parquet(ws.exam_dir / f"{batch_id}.parquet", index=False)
    counts = {name: len(getattr(split, name)) for name in ("train", "dev", "test")}
    (out / "manifest.json").write_text(json.dumps({"batch_id": batch_id, "rows": counts, **manifest}, indent=2))


def load_split(batch_id: str, ws: Workspace) -> Split:
    out = ws.batch_dir(batch_id)
    return Split(*(pd.read_parquet(out / f"{n}.parquet") for n in ("train", "dev", "test")))


def load_train(batch_ids: list[str], ws: Workspace) -> pd.DataFrame | None:
    """The train rows of accepted batches, in order (the drift reference); None if no ids."""
    parts = [pd.read_parquet(ws.batch_dir(b) / "train.parquet") for b in batch_ids]
    return pd.concat(parts, ignore_index=True) if parts else None


def quarantine(result: Intake, report: dict, ws: Workspace) -> Path:
    """Move the batch's folder (raw bytes untouched) to data/quarantine/<id>/ with a report."""
    target = ws.quarantine_dir / result.batch_id
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    shutil.move(str(ws.batch_dir(result.batch_id)), str(target))
    (target / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return target


DECIDED = "decided.json"


def mark_decided(batch_id: str, ws: Workspace, status: str, run_id: str) -> None:
    """Record that a run settled this accepted batch (promoted, rejected or held by the
    policy). Until then the batch is not "known": a run killed mid-training is rerun by a
    plain `ratchet retrain`, which resumes from its checkpoints."""
    folder = ws.batch_dir(batch_id)
    if folder.is_dir():
        (folder / DECIDED).write_text(json.dumps({"status": status, "run_id": run_id}, indent=2))


def is_decided(batch_id: str, ws: Workspace) -> bool:
    return (ws.batch_dir(batch_id) / DECIDED).exists()


def is_known(source: str | Path, ws: Workspace, endpoint_url: str | None = None) -> str | None:
    """The batch id when these exact bytes (local path or s3:// URI) were already accepted
    and decided, else None. Hashed in a streaming pass: nothing is held in memory."""
    batch_id = batch_id_of(source, endpoint_url)
    return batch_id if is_decided(batch_id, ws) else None
