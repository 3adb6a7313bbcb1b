"""Replay buffer: capacity, reservoir uniformity, sampling, save/load, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.train.replay import COLUMNS, STRATEGIES, ReplayBuffer, ReservoirBuffer, derive_buffer, new_buffer


def rows(start: int, n: int, *, batch: str = "b-0") -> pd.DataFrame:
    """n distinct rows whose text carries their position in the stream."""
    idx = range(start, start + n)
    return pd.DataFrame({
        "text": [f"row {i}" for i in idx],
        "label": [f"l{i % 5}" for i in idx],
        "slice": [f"s{i % 3}" for i in idx],
        "batch_id": batch,
    })


def positions(buffer: ReplayBuffer) -> np.ndarray:
    return buffer.rows["text"].str.slice(4).astype(int).to_numpy()


def stream(buffer: ReplayBuffer, total: int, rng: np.random.Generator, max_chunk: int = 700) -> None:
    fed = 0
    while fed < total:
        n = min(int(rng.integers(0, max_chunk)), total - fed)
        buffer.add(rows(fed, n))
        fed += n


def test_capacity_and_seen_invariants_over_random_adds():
    rng = np.random.default_rng(12345)
    for trial in range(20):
        capacity = int(rng.integers(0, 300))
        buffer = new_buffer("reservoir", capacity=capacity, seed=trial)
        fed = 0
        for _ in range(int(rng.integers(1, 12))):
            n = int(rng.integers(0, 250))
            buffer.add(rows(fed, n))
            fed += n
            assert len(buffer) == min(capacity, fed)
            assert buffer.seen == fed
            assert list(buffer.rows.columns) == COLUMNS
            kept = positions(buffer)
            assert len(set(kept)) == len(kept), "a row is stored twice"
            assert ((kept >= 0) & (kept < fed)).all(), "a row that was never offered"


def test_below_capacity_keeps_everything_in_order():
    buffer = new_buffer("reservoir", capacity=100, seed=0)
    buffer.add(rows(0, 30))
    buffer.add(rows(30, 40))
    assert list(positions(buffer)) == list(range(70))


def test_add_ignores_extra_columns():
    buffer = new_buffer("reservoir", capacity=10, seed=0)
    frame = rows(0, 5).assign(split="train", extra=1)
    buffer.add(frame)
    assert list(buffer.rows.columns) == COLUMNS
    assert len(buffer) == 5


def test_zero_capacity_keeps_nothing():
    buffer = new_buffer("reservoir", capacity=0, seed=0)
    buffer.add(rows(0, 50))
    assert len(buffer) == 0 and buffer.seen == 50
    assert len(buffer.sample(10)) == 0


def test_reservoir_uniform_over_the_stream():
    """Every row seen has the same chance capacity/seen: each half of a 10000-row stream
    holds 50% +- 10% of a 500-row buffer, whatever the chunking of the stream."""
    for seed in range(3):
        buffer = new_buffer("reservoir", capacity=500, seed=seed)
        stream(buffer, 10_000, np.random.default_rng(100 + seed))
        assert len(buffer) == 500 and buffer.seen == 10_000
        kept = positions(buffer)
        first_half = (kept < 5000).mean()
        assert 0.4 <= first_half <= 0.6, f"seed {seed}: {first_half:.2f} from the first half"
        # finer: each quarter holds 25% +- 7%; the first batch is not favoured
        quarters = np.bincount(kept // 2500, minlength=4) / 500
        assert np.all(np.abs(quarters - 0.25) <= 0.07), quarters


def test_reservoir_uniform_across_batches_of_unequal_size():
    """A small early batch is not over-represented once a large one arrives."""
    buffer = new_buffer("reservoir", capacity=400, seed=3)
    buffer.add(rows(0, 1000, batch="early"))
    buffer.add(rows(1000, 9000, batch="late"))
    share = (buffer.rows["batch_id"] == "early").mean()
    assert 0.05 <= share <= 0.15  # expected 0.10


def test_chunking_does_not_change_the_buffer():
    """Algorithm R draws once per row, so the same stream gives the same buffer
    whether it arrives in one batch or many."""
    whole = new_buffer("reservoir", capacity=200, seed=9)
    whole.add(rows(0, 3000))
    pieces = new_buffer("reservoir", capacity=200, seed=9)
    stream(pieces, 3000, np.random.default_rng(4), max_chunk=400)
    pd.testing.assert_frame_equal(whole.rows, pieces.rows)


def test_same_seed_same_buffer_different_seed_differs():
    def build(seed):
        buffer = new_buffer("reservoir", capacity=100, seed=seed)
        stream(buffer, 2000, np.random.default_rng(0))
        return buffer

    a, b, c = build(5), build(5), build(6)
    pd.testing.assert_frame_equal(a.rows, b.rows)
    pd.testing.assert_frame_equal(a.sample(40), b.sample(40))
    assert not a.rows.equals(c.rows)


def test_sample_never_exceeds_len_and_is_without_replacement():
    rng = np.random.default_rng(7)
    buffer = new_buffer("reservoir", capacity=150, seed=1)
    fed = 0
    for _ in range(15):
        n = int(rng.integers(0, 60))
        buffer.add(rows(fed, n))
        fed += n
        for want in (0, 1, int(rng.integers(0, 400)), len(buffer), len(buffer) + 1):
            picked = buffer.sample(want)
            assert len(picked) == min(want, len(buffer))
            assert picked["text"].is_unique
            assert set(picked["text"]) <= set(buffer.rows["text"])
            assert list(picked.columns) == COLUMNS
            assert list(picked.index) == list(range(len(picked)))


def test_sample_empty_buffer():
    buffer = new_buffer("reservoir", capacity=10, seed=0)
    picked = buffer.sample(5)
    assert len(picked) == 0 and list(picked.columns) == COLUMNS


def test_sample_does_not_change_the_buffer():
    buffer = new_buffer("reservoir", capacity=50, seed=0)
    buffer.add(rows(0, 200))
    before = buffer.rows.copy()
    buffer.sample(30)
    pd.testing.assert_frame_equal(buffer.rows, before)
    assert buffer.seen == 200


def test_save_load_round_trip(tmp_path):
    buffer = new_buffer("reservoir", capacity=120, seed=11)
    stream(buffer, 900, np.random.default_rng(2), max_chunk=200)
    buffer.sample(7)  # advance the generator so its state is not the seed's
    buffer.save(tmp_path / "v1")

    loaded = ReplayBuffer.load(tmp_path / "v1")
    assert isinstance(loaded, ReservoirBuffer)
    assert loaded.capacity == 120 and loaded.seen == 900 == buffer.seen
    pd.testing.assert_frame_equal(loaded.rows, buffer.rows)
    # the generator continues exactly where it was: same sample, same next admissions
    pd.testing.assert_frame_equal(loaded.sample(50), buffer.sample(50))
    loaded.add(rows(900, 300))
    buffer.add(rows(900, 300))
    pd.testing.assert_frame_equal(loaded.rows, buffer.rows)
    assert loaded.seen == buffer.seen == 1200


def test_save_load_repeatedly_matches_never_saving(tmp_path):
    """Invariant: a lineage of versions, each loading its parent's buffer, ends where
    one buffer kept in memory ends."""
    memory = new_buffer("reservoir", capacity=80, seed=21)
    on_disk = new_buffer("reservoir", capacity=80, seed=21)
    fed = 0
    for version in range(6):
        chunk = rows(fed, 60 + 17 * version, batch=f"b-{version}")
        fed += len(chunk)
        memory.sample(20)
        memory.add(chunk)
        on_disk.sample(20)
        on_disk.add(chunk)
        on_disk.save(tmp_path / f"v{version}")
        on_disk = ReplayBuffer.load(tmp_path / f"v{version}")
    pd.testing.assert_frame_equal(memory.rows, on_disk.rows)
    assert memory.seen == on_disk.seen == fed


def test_save_load_empty_buffer(tmp_path):
    buffer = new_buffer("reservoir", capacity=10, seed=0)
    buffer.save(tmp_path)
    loaded = ReplayBuffer.load(tmp_path)
    assert len(loaded) == 0 and loaded.seen == 0
    loaded.add(rows(0, 3))
    assert len(loaded) == 3


def test_unknown_strategy():
    with pytest.raises(ValueError, match="replay.strategy: unknown 'fifo'"):
        new_buffer("fifo", capacity=10, seed=0)


def test_base_class_has_no_selection_rule():
    buffer = ReplayBuffer(capacity=5, seed=0)
    with pytest.raises(NotImplementedError):
        buffer.add(rows(0, 1))


# --- every strategy -------------------------------------------------------------------

def skewed_rows(start: int, n: int, rng: np.random.Generator, batch: str = "b") -> pd.DataFrame:
    """Rows whose labels and slices are far from balanced (a few dominate)."""
    idx = range(start, start + n)
    return pd.DataFrame({
        "text": [f"row {i}" for i in idx],
        "label": [f"l{min(int(rng.geometric(0.3)), 9)}" for _ in idx],
        "slice": [f"s{min(int(rng.geometric(0.5)), 4)}" for _ in idx],
        "batch_id": batch,
    })


def balance_holds(buffer: ReplayBuffer, key: str) -> None:
    """Each group is either kept whole (all its rows seen so far) or within one row of
    the largest group."""
    counts = buffer.rows[key].value_counts()
    largest = counts.max() if len(counts) else 0
    for group, seen in buffer.seen_by[key].items():
        kept = int(counts.get(group, 0))
        assert kept == seen or kept >= largest - 1, (group, kept, seen, dict(counts))


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("trial", range(4))
def test_invariants_over_many_updates(strategy, trial):
    rng = np.random.default_rng(1000 + trial)
    capacity = int(rng.integers(0, 200))
    buffer = new_buffer(strategy, capacity=capacity, seed=trial)
    fed = 0
    for update in range(int(rng.integers(5, 15))):
        chunk = skewed_rows(fed, int(rng.integers(0, 150)), rng, batch=f"b{update}")
        buffer.add(chunk)
        fed += len(chunk)
        assert len(buffer) == min(capacity, fed), "a buffer with room drops nothing; never above capacity"
        assert buffer.seen == fed == sum(buffer.seen_by["label"].values())
        kept = positions(buffer)
        assert len(set(kept)) == len(kept) and ((kept >= 0) & (kept < fed)).all()
        if strategy == "class_balanced":
            balance_holds(buffer, "label")
        if strategy == "slice_balanced":
            balance_holds(buffer, "slice")


@pytest.mark.parametrize("strategy,key", [("class_balanced", "label"), ("slice_balanced", "slice")])
def test_balanced_strategies_equalise_groups_the_stream_skews(strategy, key):
    """With plenty of every group, the groups' shares differ by at most one row, while
    a reservoir mirrors the stream's skew."""
    rng = np.random.default_rng(5)
    stream_rows = skewed_rows(0, 6000, rng)
    counts = stream_rows[key].value_counts()
    plenty = counts[counts >= 60].index
    stream_rows = stream_rows[stream_rows[key].isin(plenty)]
    balanced = new_buffer(strategy, capacity=120, seed=0)
    reservoir = new_buffer("reservoir", capacity=120, seed=0)
    for start in range(0, len(stream_rows), 500):
        balanced.add(stream_rows.iloc[start:start + 500])
        reservoir.add(stream_rows.iloc[start:start + 500])
    kept = balanced.rows[key].value_counts()
    assert set(kept.index) == set(plenty)
    assert kept.max() - kept.min() <= 1, dict(kept)
    assert reservoir.rows[key].value_counts().max() - reservoir.rows[key].value_counts().min() > 10


def test_class_balanced_keeps_a_rare_class_whole():
    buffer = new_buffer("class_balanced", capacity=50, seed=0)
    common = rows(0, 400).assign(label="common")
    rare = rows(400, 7).assign(label="rare")
    buffer.add(pd.concat([common.iloc[:200], rare, common.iloc[200:]]))
    assert (buffer.rows["label"] == "rare").sum() == 7
    assert len(buffer) == 50


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_save_load_round_trip_every_strategy(strategy, tmp_path):
    rng = np.random.default_rng(8)
    buffer = new_buffer(strategy, capacity=60, seed=4)
    for i in range(5):
        buffer.add(skewed_rows(i * 100, 100, rng))
    buffer.save(tmp_path)
    loaded = ReplayBuffer.load(tmp_path)
    assert type(loaded) is type(buffer) and loaded.manifest() == buffer.manifest()
    pd.testing.assert_frame_equal(loaded.rows, buffer.rows)
    more = skewed_rows(500, 300, rng)
    loaded.add(more)
    buffer.add(more)
    pd.testing.assert_frame_equal(loaded.rows, buffer.rows)
    pd.testing.assert_frame_equal(loaded.sample(20), buffer.sample(20))


def test_same_seed_same_buffer_every_strategy():
    for strategy in STRATEGIES:
        a, b = (new_buffer(strategy, capacity=40, seed=2) for _ in range(2))
        for buffer in (a, b):
            stream(buffer, 1500, np.random.default_rng(0), max_chunk=300)
        pd.testing.assert_frame_equal(a.rows, b.rows)


def test_derive_buffer_keeps_the_parent_when_params_match():
    parent = new_buffer("reservoir", capacity=30, seed=0)
    parent.add(rows(0, 100))
    assert derive_buffer(parent, "reservoir", capacity=30, seed=9) is parent
    fresh = derive_buffer(None, "class_balanced", capacity=30, seed=9)
    assert fresh.strategy == "class_balanced" and len(fresh) == 0


@pytest.mark.parametrize("strategy,capacity", [("class_balanced", 30), ("reservoir", 10), ("slice_balanced", 80)])
def test_derive_buffer_reselects_from_the_parent_when_params_change(strategy, capacity):
    parent = new_buffer("reservoir", capacity=30, seed=0)
    parent.add(rows(0, 100))
    child = derive_buffer(parent, strategy, capacity=capacity, seed=1)
    assert child.strategy == strategy and child.capacity == capacity
    assert len(child) == min(capacity, len(parent))
    assert set(child.rows["text"]) <= set(parent.rows["text"])
    assert child.seen == parent.seen == 100 and child.seen_by == parent.seen_by
    assert len(parent) == 30  # the parent's buffer is read, not changed
