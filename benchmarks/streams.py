"""Benchmark streams: real datasets cut into batches that arrive one after another.

Each stream is a list of `Batch`es whose train / dev / held-out rows come from
`tasks.intake.batch.split_batch`, the same split the retrain flow applies to a delivery.

- `clinc150`: one batch per domain (10 x 15 new intents; `flows.stream.clinc150_frame`).
- `banking77`: the 77 intents in `categories.json` order cut into label groups
  (class-incremental; shipped under datasets/banking77, CC BY 4.0).
- `fpb`: Financial PhraseBank by annotator agreement: all annotators agreed, then 75%,
  66%, 50% (the same 3 labels, ever noisier data). It is CC BY-NC-SA, so it is read from
  the shared data folder at run time and never copied into the repository.

`Caps` subsample a stream for `--scale small`: the first n rows per label in each split.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from flows.stream import clinc150_domains, clinc150_frame
from tasks.intake.batch import Split, split_batch

REPO = Path(__file__).resolve().parent.parent
BANKING_DIR = REPO / "datasets" / "banking77"
# the datasets that may not be shipped: ../shared/data beside the checkout, or RATCHET_SHARED_DATA
SHARED_DATA = Path(os.environ.get("RATCHET_SHARED_DATA") or REPO.parent / "shared" / "data")
FPB_LEVELS = [("all_agree", "AllAgree"), ("agree_75", "75Agree"), ("agree_66", "66Agree"), ("agree_50", "50Agree")]


class StreamUnavailable(RuntimeError):
    """The stream's data is not on this machine; the message says where it was looked for."""


@dataclass(frozen=True)
class Caps:
    """Rows kept per label in each split (None = all)."""

    train: int | None = None
    dev: int | None = None
    test: int | None = None
    batches: int | None = None   # keep only the first n batches (tests)


@dataclass(frozen=True)
class Batch:
    name: str
    split: Split

    @property
    def train(self) -> pd.DataFrame:
        return self.split.train

    @property
    def test(self) -> pd.DataFrame:
        return self.split.test


def _cap(frame: pd.DataFrame, n: int | None) -> pd.DataFrame:
    return frame if n is None else frame.groupby("label", sort=False).head(n).reset_index(drop=True)


def make_batch(name: str, frame: pd.DataFrame, caps: Caps, test_share: float = 0.2) -> Batch:
    """`frame` has text, label, slice and (optionally) split; the batch id is its name."""
    split = split_batch(frame, name, test_share)
    return Batch(name, Split(_cap(split.train, caps.train), _cap(split.dev, caps.dev), _cap(split.test, caps.test)))


def clinc150(caps: Caps) -> list[Batch]:
    domains = clinc150_domains()[: caps.batches]
    return [make_batch(f"{i:02d}_{d}", clinc150_frame(d), caps) for i, d in enumerate(domains, start=1)]


def banking77(caps: Caps, groups: int = 7, source: Path = BANKING_DIR) -> list[Batch]:
    labels = json.loads((source / "categories.json").read_text())
    frames = []
    for split in ("train", "test"):
        part = pd.read_csv(source / f"{split}.csv", dtype=str, keep_default_na=False)
        frames.append(part.rename(columns={"category": "label"}).assign(split=split))
    data = pd.concat(frames, ignore_index=True)
    size = -(-len(labels) // groups)
    batches = []
    for g in range(groups)[: caps.batches]:
        chosen = labels[g * size:(g + 1) * size]
        name = f"{g + 1:02d}_labels_{g * size + 1}-{g * size + len(chosen)}"
        batches.append(make_batch(name, data[data["label"].isin(chosen)].assign(slice=name), caps))
    return batches


def _fpb_rows(path: Path) -> list[tuple[str, str]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # three of the four files are latin-1 (see the data README)
        text = raw.decode("latin-1")
    return [tuple(line.rsplit("@", 1)) for line in text.splitlines() if "@" in line]


def fpb(caps: Caps, source: Path | None = None) -> list[Batch]:
    """Each agreement level minus the stricter ones, so every sentence arrives once."""
    folder = (source or SHARED_DATA) / "financial_phrasebank"
    if not (folder / "Sentences_50Agree.txt").exists():
        raise StreamUnavailable(f"Financial PhraseBank not found at {folder} (it is not shipped: CC BY-NC-SA)")
    seen: set[str] = set()
    batches = []
    for i, (name, level) in enumerate(FPB_LEVELS[: caps.batches], start=1):
        rows = [(t.strip(), y.strip()) for t, y in _fpb_rows(folder / f"Sentences_{level}.txt")]
        fresh = [(t, y) for t, y in dict(rows).items() if t not in seen]
        seen.update(t for t, _ in fresh)
        frame = pd.DataFrame(fresh, columns=["text", "label"]).assign(slice=f"{i:02d}_{name}")
        batches.append(make_batch(f"{i:02d}_{name}", frame, caps))
    return batches


STREAMS = {"clinc150": clinc150, "banking77": banking77, "fpb": fpb}


def load_stream(name: str, caps: Caps, shared_data: Path | None = None) -> list[Batch]:
    if name not in STREAMS:
        raise ValueError(f"unknown stream '{name}'; choose from {sorted(STREAMS)}")
    if name == "fpb":
        return fpb(caps, shared_data)
    return STREAMS[name](caps)


def fingerprint(batches: list[Batch]) -> str:
    """A short hash of the exact rows of a stream, recorded in the results."""
    digest = hashlib.sha256()
    for b in batches:
        for part in (b.split.train, b.split.dev, b.split.test):
            digest.update(pd.util.hash_pandas_object(part[["text", "label"]], index=False).values.tobytes())
    return digest.hexdigest()[:16]
