"""Replay buffer: a bounded sample of past training rows, mixed into every fine-tune.

Fine-tuning only on a new batch makes the model forget earlier ones (on CLINC150,
sequential fine-tuning without replay ends near 10% accuracy). The buffer keeps a
bounded, representative sample of everything trained on so far and is stored with each
registry version, so a version's successor derives its buffer from its parent's.

`ReplayBuffer` does the bookkeeping once (capacity, add, sample, per-label and
per-slice counts of the stream, save/load, its own seeded generator); a strategy
overrides one hook, `_admit`, that decides which rows enter and which leave:

- `reservoir`: uniform over the whole stream (every row seen is kept with the same
  probability);
- `class_balanced`: an equal share per label; a full buffer evicts from the largest
  label (class-balanced reservoir sampling, Chrysakis & Moens 2020);
- `slice_balanced`: the same rule over the `slice` column (domain, channel, source).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ["text", "label", "slice", "batch_id"]
MANIFEST = "replay.json"
ROWS_FILE = "replay.parquet"


class ReplayBuffer:
    strategy = "base"

    def __init__(self, *, capacity: int, seed: int) -> None:
        self.capacity = capacity
        self.seen = 0
        # how many rows of each label / slice the stream has offered (not only those kept)
        self.seen_by: dict[str, Counter] = {"label": Counter(), "slice": Counter()}
        self.rows = pd.DataFrame(columns=COLUMNS)
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, frame: pd.DataFrame) -> None:
        """Offer new rows to the buffer; the strategy decides what is kept."""
        incoming = frame[COLUMNS].astype({"text": str, "label": str, "slice": str, "batch_id": str})
        incoming = incoming.reset_index(drop=True)
        self.rows = self._admit(self.rows.reset_index(drop=True), incoming).reset_index(drop=True)
        self.seen += len(incoming)
        for key, counts in self.seen_by.items():
            counts.update(incoming[key].tolist())
        assert len(self.rows) <= self.capacity, "strategy broke the capacity invariant"

    def sample(self, n: int) -> pd.DataFrame:
        """Up to n rows drawn without replacement by the buffer's own generator."""
        n = min(n, len(self.rows))
        picked = self._rng.choice(len(self.rows), size=n, replace=False) if n else []
        return self.rows.iloc[np.sort(picked)].reset_index(drop=True)

    def _admit(self, kept: pd.DataFrame, incoming: pd.DataFrame) -> pd.DataFrame:
        """The selection hook: the rows kept after `incoming` is offered to `kept`.
        `self.seen` and `self.seen_by` still count the stream before `incoming`."""
        raise NotImplementedError

    def manifest(self) -> dict:
        return {
            "strategy": self.strategy, "capacity": self.capacity, "seen": self.seen, "rows": len(self.rows),
            "seen_by": {key: dict(sorted(c.items())) for key, c in self.seen_by.items()},
            "rng_state": self._rng.bit_generator.state,
        }

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.rows.to_parquet(directory / ROWS_FILE, index=False)
        (directory / MANIFEST).write_text(json.dumps(self.manifest(), indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "ReplayBuffer":
        directory = Path(directory)
        manifest = json.loads((directory / MANIFEST).read_text())
        buffer = STRATEGIES[manifest["strategy"]](capacity=manifest["capacity"], seed=0)
        buffer.seen = manifest["seen"]
        for key, counts in manifest.get("seen_by", {}).items():
            buffer.seen_by[key] = Counter(counts)
        buffer.rows = pd.read_parquet(directory / ROWS_FILE)
        buffer._rng.bit_generator.state = manifest["rng_state"]
        return buffer


class ReservoirBuffer(ReplayBuffer):
    """Uniform over the whole stream (Vitter's algorithm R): every row seen so far is
    in the buffer with the same probability capacity / seen."""

    strategy = "reservoir"

    def _admit(self, kept: pd.DataFrame, incoming: pd.DataFrame) -> pd.DataFrame:
        slots = list(kept.itertuples(index=False, name=None))
        seen = self.seen
        for row in incoming.itertuples(index=False, name=None):
            seen += 1
            if len(slots) < self.capacity:
                slots.append(row)
                continue
            j = int(self._rng.integers(0, seen))
            if j < self.capacity:
                slots[j] = row
        return pd.DataFrame(slots, columns=COLUMNS)


class GroupBalancedBuffer(ReplayBuffer):
    """Class-balanced reservoir over the column `key`. While there is room every row is
    kept. When full, a row of a group that is not among the largest replaces a random
    row of a largest group; a row of a largest group replaces a random row of its own
    group with probability kept/seen for that group (a reservoir inside the group).
    So every group ends either whole or within one row of the largest."""

    key = "label"

    def _admit(self, kept: pd.DataFrame, incoming: pd.DataFrame) -> pd.DataFrame:
        slots = list(kept.itertuples(index=False, name=None))
        col = COLUMNS.index(self.key)
        members: dict[str, list[int]] = {}
        for i, row in enumerate(slots):
            members.setdefault(row[col], []).append(i)
        seen = Counter(self.seen_by[self.key])
        for row in incoming.itertuples(index=False, name=None):
            group = row[col]
            seen[group] += 1
            own = members.setdefault(group, [])
            if len(slots) < self.capacity:
                own.append(len(slots))
                slots.append(row)
                continue
            if not self.capacity:
                continue
            largest = max(len(m) for m in members.values())
            if len(own) < largest:
                victims = sorted(g for g, m in members.items() if len(m) == largest)
                victim = members[victims[int(self._rng.integers(0, len(victims)))]]
                slot = victim.pop(int(self._rng.integers(0, len(victim))))
                own.append(slot)
                slots[slot] = row
            elif self._rng.random() < len(own) / seen[group]:
                slots[own[int(self._rng.integers(0, len(own)))]] = row
        return pd.DataFrame(slots, columns=COLUMNS)


class ClassBalancedBuffer(GroupBalancedBuffer):
    strategy = "class_balanced"
    key = "label"


class SliceBalancedBuffer(GroupBalancedBuffer):
    strategy = "slice_balanced"
    key = "slice"


STRATEGIES: dict[str, type[ReplayBuffer]] = {
    "reservoir": ReservoirBuffer, "class_balanced": ClassBalancedBuffer, "slice_balanced": SliceBalancedBuffer,
}


def new_buffer(strategy: str, *, capacity: int, seed: int) -> ReplayBuffer:
    if strategy not in STRATEGIES:
        raise ValueError(f"replay.strategy: unknown '{strategy}', choose from {sorted(STRATEGIES)}")
    return STRATEGIES[strategy](capacity=capacity, seed=seed)


def derive_buffer(parent: ReplayBuffer | None, strategy: str, *, capacity: int, seed: int) -> ReplayBuffer:
    """The buffer a new version starts from: its parent's, unchanged when the replay
    parameters are the same; re-selected from the parent's rows by the configured
    strategy when `replay.strategy` or `replay.capacity` changed (a version's buffer is
    always derived from its parent's, never rebuilt from scratch)."""
    if parent is None:
        return new_buffer(strategy, capacity=capacity, seed=seed)
    if parent.strategy == strategy and parent.capacity == capacity:
        return parent
    buffer = new_buffer(strategy, capacity=capacity, seed=seed)
    buffer.add(parent.rows)
    # the stream it summarises is still the parent's whole stream
    buffer.seen = parent.seen
    buffer.seen_by = {key: Counter(c) for key, c in parent.seen_by.items()}
    return buffer
