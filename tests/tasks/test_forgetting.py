"""The update methods against forgetting in the head (tasks/train/forgetting.py): each
option's invariant, for the sentence classifier and the tagger, with the tiny model."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import toy_ner_frame
from tasks.core.config import ConfigError, load_params
from tasks.intake.batch import split_batch
from tasks.ner.train import TAGGERS
from tasks.train.finetune import champion_rows, train_candidate
from tasks.train.forgetting import MASKED, align_new_rows, mask_absent_old
from tasks.train.model import load_base

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- ER-ACE masking

def test_masking_hides_only_absent_old_labels_on_new_rows():
    logits = torch.zeros(4, 6)
    target = torch.tensor([1, 4, 0, 5])        # rows 0-1 new, rows 2-3 replayed
    new_row = torch.tensor([True, True, False, False])
    out = mask_absent_old(logits, target, new_row, old_rows=4)
    # old labels 0, 2, 3 are absent from the new rows: masked there; 1 is present; 4, 5 are new
    assert (out[:2, [0, 2, 3]] == MASKED).all()
    assert (out[:2, [1, 4, 5]] == 0).all()
    assert (out[2:] == 0).all()                # replayed rows keep the full softmax
    # a label present among the batch's new rows is never hidden, whatever the batch
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        target = torch.randint(0, 6, (8,), generator=g)
        new_row = torch.rand(8, generator=g) < 0.6
        out = mask_absent_old(torch.randn(8, 6, generator=g), target, new_row, old_rows=int(seed % 7))
        present = target[new_row].unique()
        assert (out[:, present] != MASKED).all()
        assert (out[~new_row] != MASKED).all()


def test_masking_token_logits_ignores_padding_labels_and_does_nothing_without_old_rows():
    logits = torch.zeros(2, 3, 5)               # 2 sentences, 3 sub-words, 5 tags
    target = torch.tensor([[-100, 2, 0], [-100, -100, -100]])
    out = mask_absent_old(logits, target, torch.tensor([True, False]), old_rows=3)
    assert (out[0, :, 1] == MASKED).all() and (out[0, :, [0, 2, 3, 4]] == 0).all()
    assert (out[1] == 0).all()
    assert torch.equal(mask_absent_old(logits, target, torch.tensor([True, False]), old_rows=0), logits)


# --- weight aligning

def test_align_scales_new_rows_to_the_old_rows_mean_norm():
    clf = load_base("tiny", ["a", "b", "c", "d"], seed=0)
    head = clf.model.classifier
    with torch.no_grad():
        head.weight[2:] *= 5
        head.bias[2:] = 1.0
    old = head.weight[:2].clone()
    before = head.weight.detach().norm(dim=1)
    gamma = align_new_rows(clf.model, old_rows=2)
    norms = head.weight.detach().norm(dim=1)
    assert gamma == pytest.approx(float(before[:2].mean() / before[2:].mean()), rel=1e-5)
    assert float(norms[2:].mean()) == pytest.approx(float(norms[:2].mean()), rel=1e-5)
    assert torch.equal(head.weight[:2], old) and torch.allclose(head.bias[2:], torch.full((2,), gamma))
    assert align_new_rows(clf.model, old_rows=0) is None and align_new_rows(clf.model, old_rows=4) is None


# --- the options through the finetune stage

def test_options_are_validated_params(workspace):
    assert not load_params(workspace / "params.yaml").train.freeze_old_head
    with pytest.raises(ConfigError, match="train.freeze_old_head must be bool"):
        load_params(workspace / "params.yaml", {"train.freeze_old_head": 1})


def _head(path) -> tuple[torch.Tensor, torch.Tensor]:
    state = load_file(f"{path}/model.safetensors")
    return state["classifier.weight"], state["classifier.bias"]


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    from conftest import TINY_PARAMS

    root = tmp_path_factory.mktemp("forgetting")
    (root / "params.yaml").write_text(TINY_PARAMS)
    return root


def test_frozen_old_head_rows_end_exactly_as_the_champion_left_them(champion, toy, tmp_path):
    params = load_params(champion / "params.yaml", {"train.epochs": 3})
    first = split_batch(toy(["weather", "music"], per_label=20, seed=0), "b-one", 0.3).train
    c1 = train_candidate(champion_dir=None, train_rows=first, out_dir=tmp_path / "c1", params=params)
    assert champion_rows(None) == 0 and champion_rows(c1.path) == 2
    second = split_batch(toy(["food", "weather"], per_label=20, seed=1), "b-two", 0.3).train
    w1, b1 = _head(c1.path)
    for frozen in (True, False):
        p = load_params(champion / "params.yaml", {"train.epochs": 3, "train.freeze_old_head": frozen,
                                                   "train.mask_absent_old": True})
        c2 = train_candidate(champion_dir=c1.path, train_rows=second, out_dir=tmp_path / f"c2-{frozen}", params=p)
        w2, b2 = _head(c2.path)
        assert c2.labels == ["music", "weather", "food"]
        kept = torch.equal(w2[:2], w1) and torch.equal(b2[:2], b1)
        assert kept == frozen                   # frozen: bit for bit; otherwise they train
        assert not torch.equal(w2[2:], torch.zeros_like(w2[2:]))


def _ner_train(types: list[str], seed: int, batch: str) -> pd.DataFrame:
    frame = toy_ner_frame(types, sentences=40, seed=seed).assign(slice=batch, batch_id=batch)
    return frame[frame["split"] == "train"].reset_index(drop=True)


def test_frozen_old_tag_rows_and_aligned_new_ones_for_a_tagger(champion, tmp_path):
    params = load_params(champion / "params.yaml", {"train.epochs": 2})
    v1 = train_candidate(training=TAGGERS, champion_dir=None, train_rows=_ner_train(["PER", "LOC"], 1, "a"),
                         out_dir=tmp_path / "v1", params=params)
    p = load_params(champion / "params.yaml", {"train.epochs": 2, "train.freeze_old_head": True,
                                               "train.mask_absent_old": True, "train.align_new_head": True})
    v2 = train_candidate(training=TAGGERS, champion_dir=v1.path, train_rows=_ner_train(["ORG", "PER"], 2, "b"),
                         out_dir=tmp_path / "v2", params=p)
    (w1, b1), (w2, b2) = _head(v1.path), _head(v2.path)
    old = len(v1.labels)
    assert v2.labels[:old] == v1.labels and len(v2.labels) == old + 2  # B-ORG, I-ORG
    assert torch.equal(w2[:old], w1) and torch.equal(b2[:old], b1)
    assert v2.train.head_alignment is not None
    norms = w2.float().norm(dim=1)
    assert float(norms[old:].mean()) == pytest.approx(float(norms[:old].mean()), rel=1e-4)


def test_default_options_keep_the_fingerprint_of_earlier_candidates(toy):
    """Keys added later are left out of a run's fingerprint at their defaults, so a
    candidate (or checkpoint) trained before they existed is still found."""
    from dataclasses import asdict

    from tasks.core.config import ModelConfig, TrainConfig
    from tasks.train.trainloop import LATER_KEYS, TrainSet, fingerprint

    clf = load_base("tiny", ["weather", "music"], seed=0)
    data = TrainSet(pd.DataFrame({"text": ["a", "b"], "label": ["weather", "music"]}))
    cfg, model_cfg = TrainConfig(), ModelConfig(base="tiny")
    assert all(asdict(cfg)[k] == v for k, v in LATER_KEYS.items())
    key = fingerprint(clf, data, cfg, model_cfg)
    on = TrainConfig(mask_absent_old=True)
    assert fingerprint(clf, data, on, model_cfg) != key


# --- classifier re-balancing

def test_balanced_indices_cap_every_label_at_the_replayed_share():
    import numpy as np

    from tasks.train.forgetting import balanced_indices

    # 40 new rows of labels 2 and 3, then 6 replayed rows of labels 0 and 1 (3 each)
    labels = np.array([2] * 20 + [3] * 20 + [0, 1, 0, 1, 0, 1])
    picked = balanced_indices(labels, new_rows=40, seed=0)
    counts = {int(k): int(v) for k, v in zip(*np.unique(labels[picked], return_counts=True))}
    assert counts == {0: 3, 1: 3, 2: 3, 3: 3}
    assert np.array_equal(picked, balanced_indices(labels, new_rows=40, seed=0))  # seeded
    assert len(balanced_indices(labels, new_rows=len(labels), seed=0)) == 0       # nothing replayed


def test_rebalancing_trains_the_head_only_and_respects_frozen_rows(champion, toy, tmp_path):
    params = load_params(champion / "params.yaml", {"train.epochs": 2})
    first = split_batch(toy(["weather", "music"], per_label=20, seed=0), "b-one", 0.3).train
    c1 = train_candidate(champion_dir=None, train_rows=first, out_dir=tmp_path / "c1", params=params)
    second = split_batch(toy(["food", "weather"], per_label=20, seed=1), "b-two", 0.3).train
    overrides = {"train.epochs": 2, "train.freeze_old_head": True}
    plain = train_candidate(champion_dir=c1.path, train_rows=second, out_dir=tmp_path / "plain",
                            params=load_params(champion / "params.yaml", overrides))
    rebalanced = train_candidate(champion_dir=c1.path, train_rows=second, out_dir=tmp_path / "re",
                                 params=load_params(champion / "params.yaml",
                                                    {**overrides, "train.rebalance_head_epochs": 3}))
    assert plain.train.rebalance_steps == 0 and rebalanced.train.rebalance_steps > 0
    a, b = load_file(f"{plain.path}/model.safetensors"), load_file(f"{rebalanced.path}/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("classifier."))  # encoder untouched
    assert not torch.equal(a["classifier.weight"], b["classifier.weight"])
    assert torch.equal(b["classifier.weight"][:2], _head(c1.path)[0])                   # old rows still frozen


def test_rebalancing_is_refused_for_a_tagger(workspace):
    with pytest.raises(ConfigError, match="does not apply to task.type ner"):
        load_params(workspace / "params.yaml", {"task.type": "ner", "train.rebalance_head_epochs": 2})
