"""Model state: fresh classifiers, growing the head without touching old labels, and a
saved directory that plain transformers can load."""

from __future__ import annotations

import json

import pytest
import torch

from tasks.train.model import (
    LABEL_MAP_FILE, Classifier, grow_head, load_base, load_classifier, minilm_path, save_classifier,
)

LABELS = ["weather", "music", "food"]
PROBE = ["can you play the guitar", "will it rain tomorrow", "i want a pizza", "hello there"]


def logits(clf: Classifier, texts=PROBE) -> torch.Tensor:
    clf.model.eval()
    enc = clf.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return clf.model(**enc).logits


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def tiny() -> Classifier:
    return load_base("tiny", LABELS, seed=0)


def test_load_base_tiny_labels_in_order(tiny):
    assert tiny.labels == LABELS
    assert tiny.model.config.label2id == {"weather": 0, "music": 1, "food": 2}
    assert tiny.model.config.num_hidden_layers == 2
    assert logits(tiny).shape == (len(PROBE), 3)


def test_load_base_keeps_given_order_not_sorted():
    clf = load_base("tiny", ["zeta", "alpha", "mid"], seed=0)
    assert clf.labels == ["zeta", "alpha", "mid"]


def test_load_base_is_seeded():
    a, b, c = (load_base("tiny", LABELS, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.model.classifier.weight, b.model.classifier.weight)
    assert torch.equal(logits(a), logits(b))
    assert not torch.equal(a.model.classifier.weight, c.model.classifier.weight)


def test_load_base_from_saved_directory(tiny, tmp_path):
    save_classifier(tiny, tmp_path / "base")
    clf = load_base(str(tmp_path / "base"), LABELS, seed=0)
    assert clf.labels == LABELS
    # the encoder comes from the directory, so outputs match the saved model
    assert torch.allclose(logits(clf), logits(tiny), atol=1e-6)


def test_load_base_missing_path_errors(tmp_path):
    with pytest.raises(OSError):
        load_base(str(tmp_path / "no-such-model"), LABELS, seed=0)


def test_load_base_missing_path_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.base"):
        load_base(str(tmp_path / "no-such-model"), LABELS, seed=0)


def test_minilm_is_packaged():
    assert (minilm_path() / "config.json").exists()


def test_grow_head_keeps_old_rows_and_logits(tiny):
    old_weight = tiny.model.classifier.weight.detach().clone()
    old_bias = tiny.model.classifier.bias.detach().clone()
    before = logits(tiny)

    grown = grow_head(tiny, ["travel", "bank"], seed=3)
    assert grown.labels == LABELS + ["travel", "bank"]
    assert grown.model.config.label2id == {label: i for i, label in enumerate(grown.labels)}
    assert grown.model.num_labels == grown.model.config.num_labels == 5
    head = grown.model.classifier
    assert head.weight.shape[0] == 5 and head.bias.shape[0] == 5
    assert torch.equal(head.weight[:3], old_weight)
    assert torch.equal(head.bias[:3], old_bias)
    after = logits(grown)
    assert after.shape == (len(PROBE), 5)
    # same maths; a wider matmul may round in a different order, hence 1e-6 not bit-exact
    assert torch.allclose(after[:, :3], before, rtol=0, atol=1e-6)
    # new rows are initialised, not zero and not copies
    assert head.weight[3:].abs().sum() > 0
    assert not torch.equal(head.weight[3], head.weight[4])


def test_grow_head_skips_known_labels_and_empty(tiny):
    assert grow_head(tiny, [], seed=0).labels == LABELS
    grown = grow_head(tiny, ["music", "travel", "weather"], seed=0)
    assert grown.labels == LABELS + ["travel"]


def test_grow_head_dedupes_new_labels(tiny):
    """A label repeated in `new_labels` gets one id, not two (id2label/label2id stay a bijection)."""
    grown = grow_head(tiny, ["travel", "bank", "travel"], seed=0)
    assert grown.labels == LABELS + ["travel", "bank"]
    assert grown.model.config.label2id == {label: i for i, label in enumerate(grown.labels)}
    assert grown.model.classifier.weight.shape[0] == 5


def test_label_ids_never_change_over_a_lineage(tiny):
    """Invariant: growing the head many times only appends; every label keeps its id,
    and logits for labels that existed before a step are unchanged by it."""
    clf = tiny
    ids = {label: i for i, label in enumerate(clf.labels)}
    for step, new in enumerate([["travel"], ["bank", "sport"], [], ["health", "music"], ["car"]]):
        before = logits(clf)
        clf = grow_head(clf, new, seed=step)
        for label, i in ids.items():
            assert clf.model.config.label2id[label] == i
            assert clf.labels[i] == label
        assert torch.allclose(logits(clf)[:, :before.shape[1]], before, rtol=0, atol=1e-6)
        ids = {label: i for i, label in enumerate(clf.labels)}
    assert clf.labels == LABELS + ["travel", "bank", "sport", "health", "car"]


def test_grow_head_seeded(tmp_path):
    a = grow_head(load_base("tiny", LABELS, seed=0), ["travel"], seed=5)
    b = grow_head(load_base("tiny", LABELS, seed=0), ["travel"], seed=5)
    assert torch.equal(a.model.classifier.weight, b.model.classifier.weight)


def test_grown_head_trains(tiny):
    """The grown model still computes a loss with the new label ids (num_labels updated)."""
    grown = grow_head(tiny, ["travel"], seed=0)
    enc = grown.tokenizer(PROBE[:2], padding=True, return_tensors="pt")
    out = grown.model(**enc, labels=torch.tensor([3, 0]))
    out.loss.backward()
    assert grown.model.classifier.weight.grad[3].abs().sum() > 0


def test_save_load_round_trip_identical_logits(tiny, tmp_path):
    grown = grow_head(tiny, ["travel"], seed=1)
    path = save_classifier(grown, tmp_path / "model")
    assert (path / "model.safetensors").exists()
    assert not (path / "pytorch_model.bin").exists()
    assert json.loads((path / LABEL_MAP_FILE).read_text()) == {"labels": LABELS + ["travel"]}
    loaded = load_classifier(path)
    assert loaded.labels == grown.labels
    assert torch.equal(logits(loaded), logits(grown))
    for (name, a), (_, b) in zip(grown.model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), name
    # the tokenizer travels with the model
    assert loaded.tokenizer(PROBE)["input_ids"] == grown.tokenizer(PROBE)["input_ids"]


def test_save_twice_is_stable(tiny, tmp_path):
    save_classifier(tiny, tmp_path / "a")
    save_classifier(load_classifier(tmp_path / "a"), tmp_path / "b")
    assert torch.equal(logits(load_classifier(tmp_path / "b")), logits(tiny))


def test_plain_transformers_pipeline_loads_saved_dir(toy, tmp_path):
    """A saved version is usable by anyone with transformers: stock architecture, no
    custom code referenced, labels by name. (In-process to keep the fast tier fast; the
    directory names no Ratchet module, so nothing of ours can be imported by it.)"""
    from transformers import pipeline

    from tasks.core.config import ModelConfig, TrainConfig
    from tasks.train.finetune import TrainSet, finetune

    clf = load_base("tiny", ["weather", "music"], seed=0)
    train = toy(["weather", "music"], per_label=20)
    finetune(clf, TrainSet(train), model_cfg=ModelConfig(base="tiny", max_length=32),
             cfg=TrainConfig(epochs=15, batch_size=16, lr=2e-3, warmup_ratio=0.0, seed=7, precision="fp32"))
    clf = grow_head(clf, ["food"], seed=0)
    save_classifier(clf, tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert "auto_map" not in config
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "weather", "1": "music", "2": "food"}

    texts = ["will it rain today", "play the guitar for me", "rain rain rain", "my guitar"]
    expected = logits(clf, texts).softmax(-1)
    pipe = pipeline("text-classification", model=str(tmp_path / "model"), device="cpu", top_k=None)
    assert type(pipe.model).__module__.startswith("transformers.")
    out = pipe(texts)
    for text_out, probs in zip(out, expected):
        scores = {item["label"]: item["score"] for item in text_out}
        assert set(scores) == {"weather", "music", "food"}
        for i, label in enumerate(clf.labels):
            assert scores[label] == pytest.approx(float(probs[i]), abs=1e-4)
    top = [max(o, key=lambda item: item["score"])["label"] for o in out]
    assert top == ["weather", "music", "weather", "music"]
