"""Drift's reference embeddings, stored with the version they belong to.

Embedding drift (tasks/drift/embed_drift.py, tasks/ner/drift.py) compares production's
pooled sentence vectors of the new batch with those of a reference sample. That sample
is drawn from the held-out rows of the batches behind production: rows no version of
the lineage trained on, like the new batch's (a fine-tuned encoder packs the rows it
trained on tighter than unseen ones, which a domain classifier could take for drift).

The sample is a consistent hash sample: the `drift.max_embed_rows` rows whose hash of
the seed and the row's key is smallest. When the lineage grows by a batch, every old
row that still ranks stays in it, so what a version stored at promotion is what the
drift runs judged against it need. At promotion the candidate's vectors of that sample
are stored (`drift_reference.npz`, sealed by the integrity manifest): a statistics
version has them from its exam already; a fine-tuned one pays one forward pass over at
most `drift.max_embed_rows` rows, once, instead of one per drift run against it (a
scheduled run that the retrain policy skips, a rejected batch). Rows the file lacks (a
pending batch's, a version promoted before the file existed) are computed, and the
drift result counts both (`embedded_reference.stored` / `.computed`). Same rows, same
model, same pooling: the vectors are a fresh computation's (bitwise for a fine-tuned
version whose sample is unchanged, else to float rounding from other batch paddings).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

REFERENCE_FILE = "drift_reference.npz"

Embed = Callable[[pd.DataFrame], np.ndarray]  # rows -> (rows, hidden) pooled vectors, in row order


@dataclass(frozen=True)
class Reference:
    """The reference side of embedding drift: the sampled rows and their vectors."""

    rows: pd.DataFrame
    vectors: np.ndarray
    stored: int  # vectors read from production's drift_reference.npz
    computed: int  # vectors production's encoder computed in this run

    def sampling(self, total: int) -> dict:
        return {"rows": total, "used": len(self.rows), "sampled": len(self.rows) < total,
                "stored": self.stored, "computed": self.computed}


def reference_sample(frame: pd.DataFrame, keys: list[str], cap: int, seed: int) -> tuple[pd.DataFrame, list[str]]:
    """The `cap` rows (0: all) whose hash of (seed, key) is smallest, in frame order."""
    if cap <= 0 or len(frame) <= cap:
        return frame.reset_index(drop=True), list(keys)
    rank = [hashlib.sha256(f"{seed}\0{k}".encode()).digest() for k in keys]
    keep = sorted(sorted(range(len(keys)), key=rank.__getitem__)[:cap])
    return frame.iloc[keep].reset_index(drop=True), [keys[i] for i in keep]


def stored_reference(model_dir: str | Path | None) -> dict[str, np.ndarray]:
    """The reference vectors stored with a version ({} when it has none)."""
    path = Path(model_dir) / REFERENCE_FILE if model_dir is not None else None
    if path is None or not path.exists():
        return {}
    with np.load(path) as f:
        return dict(zip((str(k) for k in f["keys"]), f["vectors"]))


def reference_embeddings(frame: pd.DataFrame, keys: list[str], *, cap: int, seed: int,
                         model_dir: str | Path | None, embed: Embed) -> Reference:
    """The reference sample of `frame` with production's vectors: stored ones where the
    version at `model_dir` has them, the rest computed by `embed`."""
    rows, sample_keys = reference_sample(frame, keys, cap, seed)
    known = stored_reference(model_dir)
    todo = [i for i, k in enumerate(sample_keys) if k not in known]
    if not len(rows):
        return Reference(rows, np.zeros((0, 0), dtype=np.float32), 0, 0)
    if len(todo) == len(rows):  # nothing stored: exactly what store_reference computed
        return Reference(rows, np.asarray(embed(rows), dtype=np.float32), 0, len(rows))
    vectors = np.stack([known.get(k, np.zeros_like(next(iter(known.values())))) for k in sample_keys])
    if todo:
        vectors[todo] = embed(rows.iloc[todo].reset_index(drop=True))
    return Reference(rows, vectors.astype(np.float32, copy=False), len(rows) - len(todo), len(todo))


def store_reference(model_dir: str | Path, frame: pd.DataFrame, keys: list[str], *, cap: int, seed: int,
                    embed: Embed) -> Path | None:
    """Store the version's vectors of the reference sample of `frame` (the held-out rows
    of its lineage) in `model_dir`, before it is registered and sealed."""
    if not len(frame):
        return None
    rows, sample_keys = reference_sample(frame, keys, cap, seed)
    out = Path(model_dir) / REFERENCE_FILE
    np.savez(out, keys=np.array(sample_keys, dtype=str), vectors=np.asarray(embed(rows), dtype=np.float32))
    return out
