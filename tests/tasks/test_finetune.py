"""Fine-tune: device choice, length-bucketed batching, learning, determinism, and the
candidate directory a training run leaves behind."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.core.config import ModelConfig, TrainConfig, load_params
from tasks.train.finetune import TrainSet, finetune, pick_device, train_candidate
from tasks.train.model import freeze_lower_layers
from tasks.train.trainloop import build_optimizer, length_bucketed_batches, planned_epochs, planned_steps
from tasks.intake.batch import split_batch
from tasks.train.model import load_base, load_classifier
from tasks.train.replay import ReplayBuffer

MODEL = ModelConfig(base="tiny", max_length=32)
FAST = TrainConfig(epochs=8, batch_size=16, lr=2e-3, warmup_ratio=0.0, seed=7, precision="fp32", device="cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# --- device ---------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_pick_device_fp32_on_cpu(no_cuda, device):
    assert pick_device(TrainConfig(precision="fp32", device=device)) == (torch.device("cpu"), None)


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_pick_device_bf16_on_cpu(no_cuda, device):
    assert pick_device(TrainConfig(precision="bf16", device=device)) == (torch.device("cpu"), torch.bfloat16)


@pytest.mark.parametrize("has_bf16,expected", [(True, torch.bfloat16), (False, None)])
def test_pick_device_auto_on_cpu_follows_cpu_support(no_cuda, monkeypatch, has_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: has_bf16, raising=False)
    assert pick_device(TrainConfig(precision="auto", device="auto")) == (torch.device("cpu"), expected)


def test_pick_device_cuda_requested_but_absent(no_cuda):
    with pytest.raises(RuntimeError, match="train.device is 'cuda'"):
        pick_device(TrainConfig(device="cuda"))


@pytest.mark.parametrize("bf16_ok,expected", [(True, torch.bfloat16), (False, None)])
def test_pick_device_auto_prefers_cuda(monkeypatch, bf16_ok, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    assert pick_device(TrainConfig(precision="auto", device="auto")) == (torch.device("cuda"), expected)
    # an explicit cpu request wins over a present GPU
    assert pick_device(TrainConfig(precision="fp32", device="cpu"))[0] == torch.device("cpu")


# --- batching -------------------------------------------------------------------------

def test_length_bucketed_batches_cover_every_index_once():
    rng_cases = np.random.default_rng(0)
    for case in range(40):
        n = int(rng_cases.integers(0, 3000))
        batch_size = int(rng_cases.integers(1, 70))
        lengths = rng_cases.integers(1, 128, size=n)
        rng = np.random.default_rng(case)
        for _epoch in range(2):
            batches = length_bucketed_batches(lengths, batch_size, rng)
            flat = np.concatenate(batches) if batches else np.array([], dtype=int)
            assert sorted(flat.tolist()) == list(range(n)), (n, batch_size)
            assert all(1 <= len(b) <= batch_size for b in batches)
            window = batch_size * 50
            expected = sum(math.ceil(min(window, n - s) / batch_size) for s in range(0, n, window))
            assert len(batches) == expected


def test_length_bucketed_batches_group_similar_lengths():
    rng = np.random.default_rng(1)
    lengths = rng.integers(3, 120, size=2000)
    batches = length_bucketed_batches(lengths, 32, np.random.default_rng(2))
    bucketed_spread = np.mean([np.ptp(lengths[b]) for b in batches])
    random_spread = np.mean([np.ptp(lengths[b]) for b in np.array_split(rng.permutation(2000), len(batches))])
    assert bucketed_spread < random_spread / 5


def test_length_bucketed_batches_seeded_and_shuffled_per_epoch():
    lengths = np.random.default_rng(3).integers(1, 60, size=500)
    a = length_bucketed_batches(lengths, 16, np.random.default_rng(9))
    b = length_bucketed_batches(lengths, 16, np.random.default_rng(9))
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
    rng = np.random.default_rng(9)
    first, second = length_bucketed_batches(lengths, 16, rng), length_bucketed_batches(lengths, 16, rng)
    assert not all(np.array_equal(x, y) for x, y in zip(first, second))


# --- finetune -------------------------------------------------------------------------

def _loss(clf, rows: pd.DataFrame) -> float:
    enc = clf.tokenizer(list(rows["text"]), padding=True, truncation=True, max_length=32, return_tensors="pt")
    target = torch.tensor([clf.model.config.label2id[x] for x in rows["label"]])
    with torch.inference_mode():
        return float(clf.model.eval()(**enc, labels=target).loss)


def test_finetune_lowers_loss_and_reports(toy):
    rows = toy(["weather", "music", "food"], per_label=16)
    clf = load_base("tiny", ["weather", "music", "food"], seed=1)
    before = _loss(clf, rows)
    cfg = TrainConfig(**{**FAST.__dict__, "epochs": 20})
    report = finetune(clf, TrainSet(rows, replay_rows=10), cfg=cfg, model_cfg=MODEL)
    after = _loss(clf, rows)
    assert after < before * 0.5, (before, after)
    steps = math.ceil(len(rows) / cfg.batch_size) * cfg.epochs
    assert report.steps == steps == len(report.losses)
    assert report.samples == len(rows) * cfg.epochs
    assert (report.new_rows, report.replay_rows) == (len(rows) - 10, 10)
    assert (report.device, report.precision) == ("cpu", "fp32")
    assert np.mean(report.losses[-3:]) < np.mean(report.losses[:3])
    # returned ready to serve: eval mode, on the CPU
    assert not clf.model.training
    assert next(clf.model.parameters()).device.type == "cpu"
    json.dumps(report.to_dict())  # the report is plain JSON


def test_finetune_bitwise_deterministic(toy):
    rows = toy(["weather", "music"], per_label=16)
    states, losses = [], []
    for _ in range(2):
        clf = load_base("tiny", ["weather", "music"], seed=3)
        report = finetune(clf, TrainSet(rows), cfg=FAST, model_cfg=MODEL)
        states.append(clf.model.state_dict())
        losses.append(report.losses)
    assert losses[0] == losses[1]
    assert states[0].keys() == states[1].keys()
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name


def test_finetune_seed_matters(toy):
    rows = toy(["weather", "music"], per_label=10)
    weights = []
    for seed in (1, 2):
        clf = load_base("tiny", ["weather", "music"], seed=0)
        finetune(clf, TrainSet(rows), cfg=TrainConfig(**{**FAST.__dict__, "seed": seed, "epochs": 2}),
                 model_cfg=MODEL)
        weights.append(clf.model.classifier.weight.detach().clone())
    assert not torch.equal(*weights)


# --- candidate ------------------------------------------------------------------------

def _tree_digest(path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_train_candidate_first_then_successor(toy, workspace, tmp_path):
    params = load_params(workspace / "params.yaml", {"train.epochs": 12})
    first = split_batch(toy(["weather", "music"], per_label=30, seed=0), "b-one", 0.3).train
    cand = train_candidate(champion_dir=None, train_rows=first, out_dir=tmp_path / "c1", params=params)

    c1 = tmp_path / "c1"
    for name in ("config.json", "model.safetensors", "label_map.json", "replay.parquet", "replay.json",
                 "train_report.json"):
        assert (c1 / name).exists(), name
    assert cand.labels == cand.new_labels == ["music", "weather"]
    assert cand.path == str(c1)
    report = json.loads((c1 / "train_report.json").read_text())
    assert report["replay_rows"] == 0 and report["new_rows"] == len(first)
    clf = load_classifier(c1)
    assert clf.labels == ["music", "weather"]
    buffer = ReplayBuffer.load(c1)
    assert buffer.seen == len(first) == len(buffer)  # capacity 200 > 21 rows
    assert set(buffer.rows["text"]) == set(first["text"])

    # successor: the champion directory is read, never changed
    digest = _tree_digest(c1)
    second = split_batch(toy(["food", "travel", "weather"], per_label=20, seed=1), "b-two", 0.3).train
    cand2 = train_candidate(champion_dir=c1, train_rows=second, out_dir=tmp_path / "c2", params=params)
    assert _tree_digest(c1) == digest

    assert cand2.new_labels == ["food", "travel"]
    assert cand2.labels == ["music", "weather", "food", "travel"]  # old ids kept, new appended
    grown = load_classifier(tmp_path / "c2")
    assert grown.labels == cand2.labels
    assert grown.model.config.label2id["music"] == 0 and grown.model.config.label2id["weather"] == 1
    child = ReplayBuffer.load(tmp_path / "c2")
    assert child.seen == buffer.seen + len(second)
    assert len(child) == min(params.replay.capacity, child.seen)
    assert set(child.rows["batch_id"]) == {"b-one", "b-two"}
    assert set(child.rows["text"]) <= set(first["text"]) | set(second["text"])
    assert cand2.train.replay_rows == min(round(params.replay.ratio * len(second)), len(buffer))
    assert cand2.train.new_rows == len(second)


def test_train_candidate_deterministic(toy, workspace, tmp_path):
    params = load_params(workspace / "params.yaml", {"train.epochs": 3})
    rows = split_batch(toy(["weather", "music"], per_label=10), "b-x", 0.3).train
    for name in ("a", "b"):
        train_candidate(champion_dir=None, train_rows=rows, out_dir=tmp_path / name, params=params)
    a, b = load_classifier(tmp_path / "a"), load_classifier(tmp_path / "b")
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), name
    pd.testing.assert_frame_equal(ReplayBuffer.load(tmp_path / "a").rows, ReplayBuffer.load(tmp_path / "b").rows)
    assert (tmp_path / "a" / "replay.json").read_text() == (tmp_path / "b" / "replay.json").read_text()


# --- early stopping, max_steps, dev carve, frozen layers --------------------------------

def test_max_steps_caps_training(toy):
    rows = toy(["weather", "music"], per_label=16)
    clf = load_base("tiny", ["weather", "music"], seed=0)
    report = finetune(clf, TrainSet(rows), cfg=TrainConfig(**{**FAST.__dict__, "max_steps": 5}), model_cfg=MODEL)
    assert report.steps == len(report.losses) == 5
    assert report.samples == report.new_samples <= 5 * FAST.batch_size


def test_early_stopping_stops_and_keeps_the_best_epoch(toy):
    """A dev set whose labels contradict the training rows only gets worse, so training
    stops `patience` epochs after its best one, and reports that epoch's dev loss."""
    rows = toy(["weather", "music"], per_label=16)
    flipped = rows.assign(label=rows["label"].map({"weather": "music", "music": "weather"})).head(12)
    cfg = TrainConfig(**{**FAST.__dict__, "epochs": 10, "early_stopping_patience": 2})
    clf = load_base("tiny", ["weather", "music"], seed=0)
    report = finetune(clf, TrainSet(rows, dev=flipped), cfg=cfg, model_cfg=MODEL)
    assert report.stopped_early and report.epochs < 10
    assert report.dev_loss == min(report.dev_losses)
    # the weights kept are the best epoch's, not the last one's
    assert _loss(clf, flipped) == pytest.approx(report.dev_loss, abs=1e-4)
    assert report.dev_losses[-1] > report.dev_loss
    # it ran the best epoch plus `patience` worse ones, then stopped
    steps = math.ceil(len(rows) / cfg.batch_size)
    best = report.dev_losses.index(min(report.dev_losses)) + 1
    assert report.steps == steps * (best + cfg.early_stopping_patience)


def test_dev_split_prefers_the_batch_dev_rows_else_carves_a_seeded_share():
    from tasks.train.finetune import dev_split

    train = pd.DataFrame({"text": [f"t{i}" for i in range(50)], "label": "x"})
    dev = pd.DataFrame({"text": ["d"], "label": ["x"]})
    assert dev_split(train, dev, share=0.1, patience=2, seed=0) == (train, dev)
    assert dev_split(train, None, share=0.1, patience=0, seed=0)[1] is None  # early stopping off
    kept, carved = dev_split(train, None, share=0.1, patience=2, seed=0)
    assert len(carved) == 5 and len(kept) == 45
    assert set(kept["text"]).isdisjoint(carved["text"]) and set(kept["text"]) | set(carved["text"]) == set(train["text"])
    assert dev_split(train, None, share=0.1, patience=2, seed=0)[1].equals(carved)
    assert not dev_split(train, None, share=0.1, patience=2, seed=1)[1].equals(carved)
    assert dev_split(train.head(3), None, share=0.1, patience=2, seed=0)[1] is None  # too small to carve


def test_freeze_layers_leaves_lower_layers_untouched(toy):
    rows = toy(["weather", "music"], per_label=10)
    clf = load_base("tiny", ["weather", "music"], seed=0)
    before = {k: v.clone() for k, v in clf.model.state_dict().items()}
    finetune(clf, TrainSet(rows), cfg=TrainConfig(**{**FAST.__dict__, "epochs": 2, "freeze_layers": 1}),
             model_cfg=MODEL)
    after = clf.model.state_dict()
    for name in before:
        frozen = name.startswith("bert.embeddings") or name.startswith("bert.encoder.layer.0.")
        assert torch.equal(before[name], after[name]) == frozen, name
    with pytest.raises(ValueError, match="train.freeze_layers"):
        finetune(load_base("tiny", ["a"], seed=0), TrainSet(rows.assign(label="a")),
                 cfg=TrainConfig(**{**FAST.__dict__, "freeze_layers": 3}), model_cfg=MODEL)


def test_train_report_json_fields(toy, workspace, tmp_path):
    params = load_params(workspace / "params.yaml", {"train.epochs": 2, "replay.strategy": "class_balanced"})
    rows = split_batch(toy(["weather", "music"], per_label=10), "b-x", 0.3).train
    cand = train_candidate(champion_dir=None, train_rows=rows, out_dir=tmp_path / "c", params=params)
    report = json.loads((tmp_path / "c" / "train_report.json").read_text())
    for key in ("steps", "new_samples", "replay_samples", "seconds", "samples_per_s", "peak_memory_mb",
                "final_loss", "device", "precision", "inputs_sha256"):
        assert report[key] is not None, key
    assert report["new_labels"] == cand.new_labels
    assert report["samples"] == report["new_samples"] + report["replay_samples"]
    assert ReplayBuffer.load(tmp_path / "c").strategy == "class_balanced"


def test_replay_from_the_lineage_pool_draws_from_the_pool_and_keeps_the_buffer_the_same(toy):
    import pandas as pd

    from tasks.train.finetune import replay_sample
    from tasks.train.replay import new_buffer

    old = toy(["weather", "music"], per_label=20, seed=1, slice_name="A").assign(batch_id="b-1")
    buffer = new_buffer("reservoir", capacity=10, seed=0)
    buffer.add(old)
    state = buffer.manifest()["rng_state"]
    pool = pd.concat([old, toy(["food"], per_label=20, seed=2, slice_name="B").assign(batch_id="b-2")])
    got = replay_sample(buffer, pool, 30, seed=7)
    assert len(got) == 30 and set(got["batch_id"]) == {"b-1", "b-2"}  # more than the 10-row buffer holds
    assert got.equals(replay_sample(buffer, pool, 30, seed=7))  # seeded
    assert buffer.manifest()["rng_state"] == state  # the buffer's generator was not touched
    assert len(replay_sample(buffer, None, 30, seed=7)) == 10  # without a pool: the buffer, capped


# --- training budget and learning rates (train.min_steps, head_lr_scale, encoder_lr_scale)

def test_min_steps_adds_epochs_to_a_small_delivery_only(toy):
    rows = toy(["weather", "music"], per_label=16)  # 32 rows: 2 steps an epoch at batch 16
    cfg = TrainConfig(**{**FAST.__dict__, "epochs": 2, "min_steps": 11})
    assert (planned_epochs(len(rows), cfg), planned_steps(len(rows), cfg)) == (6, 12)
    report = finetune(load_base("tiny", ["weather", "music"], seed=0), TrainSet(rows), cfg=cfg, model_cfg=MODEL)
    assert (report.epochs, report.steps) == (6, 12)
    # a delivery with enough steps in `epochs` is trained as before; max_steps still caps
    assert planned_steps(400, cfg) == math.ceil(400 / cfg.batch_size) * 2
    assert planned_steps(len(rows), TrainConfig(**{**cfg.__dict__, "max_steps": 5})) == 5


def _lrs(model, opt) -> dict[str, float]:
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    return {name: lr_of[id(p)] for name, p in model.named_parameters() if id(p) in lr_of}


def test_head_and_encoder_learning_rates():
    clf = load_base("tiny", ["weather", "music"], seed=0)
    cfg = TrainConfig(**{**FAST.__dict__, "lr": 1e-3, "head_lr_scale": 10.0, "encoder_lr_scale": 0.1})
    cold, warm = _lrs(clf.model, build_optimizer(clf.model, cfg, warm=False)), _lrs(clf.model, build_optimizer(clf.model, cfg, warm=True))
    for name in cold:
        head = name.startswith("classifier.")
        assert cold[name] == pytest.approx(1e-2 if head else 1e-3), name
        # the slower encoder applies only when fine-tuning a promoted version
        assert warm[name] == pytest.approx(1e-2 if head else 1e-4), name
    # frozen layers get no optimizer state
    freeze_lower_layers(clf.model, 1)
    assert not any(n.startswith("bert.embeddings") for n in _lrs(clf.model, build_optimizer(clf.model, cfg, warm=True)))


def test_unit_scales_train_bitwise_like_one_learning_rate(toy):
    """head_lr_scale = encoder_lr_scale = 1 is the plain optimizer: same weights, bit for bit."""
    rows = toy(["weather", "music"], per_label=8)
    got = []
    for extra in ({}, {"head_lr_scale": 1.0, "encoder_lr_scale": 1.0}):
        clf = load_base("tiny", ["weather", "music"], seed=0)
        finetune(clf, TrainSet(rows, warm=True), cfg=TrainConfig(**{**FAST.__dict__, **extra}), model_cfg=MODEL)
        got.append(clf.model.state_dict())
    assert all(torch.equal(got[0][k], got[1][k]) for k in got[0])


def test_a_label_only_in_the_dev_rows_still_gets_a_head_row(toy, workspace, tmp_path):
    """A small delivery can leave a rare label's only rows in dev: the head must know it
    (the dev loss needs its id), it just has no training rows."""
    params = load_params(workspace / "params.yaml", {"train.epochs": 1, "train.early_stopping_patience": 1})
    rows = split_batch(toy(["weather", "music"], per_label=10), "b-x", 0.3).train
    dev = toy(["weather", "food"], per_label=2)
    cand = train_candidate(champion_dir=None, train_rows=rows, dev_rows=dev, out_dir=tmp_path / "c", params=params)
    assert cand.labels == ["food", "music", "weather"]
    assert cand.train.dev_loss is not None
