"""The class-statistics head (`train.stats_head: alone`, tasks/train/stats_head.py) with
the tiny model: the statistics after each delivery equal a recomputation from every row
seen, the encoder is never touched, a saved version predicts through the head wherever
Ratchet loads it, and the options are validated params."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tasks.core.config import ConfigError, load_params
from tasks.intake.batch import split_batch
from tasks.judge.evaluate import predict
from tasks.train.finetune import train_candidate
from tasks.train.model import load_base, load_classifier
from tasks.train.stats_head import ClassStats, StatsHeadModel, sentence_features

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STATS = {"train.stats_head": "alone", "train.stats_features": 48, "train.stats_bandwidth": 1.0,
         "train.stats_shrinkage": 0.1}


@pytest.fixture(scope="module")
def params_file(tmp_path_factory):
    from conftest import TINY_PARAMS

    root = tmp_path_factory.mktemp("stats")
    (root / "params.yaml").write_text(TINY_PARAMS)
    return root / "params.yaml"


@pytest.fixture(scope="module")
def two_versions(params_file, tmp_path_factory):
    from conftest import toy_frame

    out = tmp_path_factory.mktemp("stats-versions")
    params = load_params(params_file, STATS)
    first = split_batch(toy_frame(["weather", "music"], per_label=20, seed=0), "b-one", 0.3).train
    second = split_batch(toy_frame(["food", "weather"], per_label=20, seed=1), "b-two", 0.3).train
    v1 = train_candidate(champion_dir=None, train_rows=first, out_dir=out / "v1", params=params)
    v2 = train_candidate(champion_dir=v1.path, train_rows=second, out_dir=out / "v2", params=params)
    return params, first, second, v1, v2


def test_statistics_after_a_delivery_equal_a_recomputation_from_all_rows_seen(two_versions):
    params, first, second, v1, v2 = two_versions
    assert v1.labels == ["music", "weather"] and v2.labels == ["music", "weather", "food"]
    assert v2.new_labels == ["food"] and v2.train.steps == 0 and v2.train.stats_rows == len(second)
    kept = ClassStats.load(v2.path)
    clf = load_classifier(v2.path)
    fresh = ClassStats.empty(clf.model.config.hidden_size, 48, 1.0, 0.1, params.train.seed)
    everything = pd.concat([first, second], ignore_index=True)
    z = sentence_features(clf.model, clf.tokenizer, everything["text"].tolist(), fresh, max_length=64)
    fresh.ensure(v2.labels)
    fresh.add(z, everything["label"].tolist())
    fresh.solve()
    assert kept.labels == fresh.labels == v2.labels
    assert np.array_equal(kept.counts, fresh.counts)
    np.testing.assert_allclose(kept.sums, fresh.sums, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(kept.scatter, fresh.scatter, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(kept.weights, fresh.weights, rtol=1e-4, atol=1e-5)
    assert v2.train.stats_bytes > kept.scatter.nbytes


def test_the_encoder_is_never_trained(two_versions, params_file):
    params, *_ , v2 = two_versions
    base = load_base("tiny", ["x"], params.train.seed).model.base_model.state_dict()
    saved = load_file(f"{v2.path}/model.safetensors")
    encoder = {k.removeprefix("bert."): v for k, v in saved.items() if k.startswith("bert.")}
    assert encoder.keys() == base.keys()
    assert all(torch.equal(encoder[k], base[k]) for k in base)


def test_a_saved_version_predicts_through_the_statistics_head(two_versions):
    _, first, second, _, v2 = two_versions
    clf = load_classifier(v2.path)
    assert isinstance(clf.model, StatsHeadModel) and clf.labels == v2.labels
    assert clf.model.config.ratchet_head == "class_stats"
    texts = pd.concat([first, second])["text"].tolist()
    stats = clf.model.stats
    z = torch.as_tensor(sentence_features(clf.model, clf.tokenizer, texts, stats, max_length=64)).float()
    by_hand = [clf.labels[i] for i in stats.logits(z).argmax(-1).tolist()]
    assert predict(clf, texts, batch_size=16, max_length=64) == by_hand
    # with the covariance shrunk all the way the head is nearest-class-mean: each label's
    # mean is closest to itself
    stats.shrinkage = 1.0
    stats.solve()
    means = torch.as_tensor(stats.sums / stats.counts[:, None]).float()
    assert stats.logits(means).argmax(-1).tolist() == list(range(len(clf.labels)))


def test_a_label_without_rows_is_never_predicted():
    stats = ClassStats.empty(hidden=8, features=16, bandwidth=1.0, shrinkage=0.1, seed=0)
    rng = np.random.default_rng(0)
    stats.ensure(["a", "b", "never"])
    stats.add(rng.normal(size=(10, 16)), ["a"] * 5 + ["b"] * 5)
    stats.solve()
    logits = stats.logits(torch.as_tensor(rng.normal(size=(50, 16))).float())
    assert (logits.argmax(-1) != 2).all()


def test_fine_tuned_champion_hands_over_through_its_replay_buffer(params_file, tmp_path):
    from conftest import toy_frame

    first = split_batch(toy_frame(["weather", "music"], per_label=20, seed=0), "b-one", 0.3).train
    tuned = train_candidate(champion_dir=None, train_rows=first, out_dir=tmp_path / "tuned",
                            params=load_params(params_file, {"train.epochs": 1}))
    second = split_batch(toy_frame(["food"], per_label=20, seed=1), "b-two", 0.3).train
    v2 = train_candidate(champion_dir=tuned.path, train_rows=second, out_dir=tmp_path / "v2",
                         params=load_params(params_file, STATS))
    assert v2.train.replay_rows == len(first)  # the buffer (capacity above the rows) seeds the old labels
    assert ClassStats.load(v2.path).counts.tolist() == [
        int((first["label"] == "music").sum()), int((first["label"] == "weather").sum()), len(second)]
    # ... and fine-tuning takes over again from the statistics version's encoder
    back = train_candidate(champion_dir=v2.path, train_rows=second, out_dir=tmp_path / "back",
                           params=load_params(params_file, {"train.epochs": 1}))
    assert not isinstance(load_classifier(back.path).model, StatsHeadModel) and back.train.steps > 0


def test_options_are_validated_params(params_file):
    assert load_params(params_file).train.stats_head == "off"
    with pytest.raises(ConfigError, match="stats_head"):
        load_params(params_file, {"train.stats_head": "sometimes"})
    with pytest.raises(ConfigError, match="does not apply to task.type ner"):
        load_params(params_file, {"train.stats_head": "alone", "task.type": "ner"})
    # auto: statistics for a sentence classifier, fine-tuning for a tagger
    from tasks.core.config import stats_head_on

    assert stats_head_on(load_params(params_file, {"train.stats_head": "auto"}))
    assert not stats_head_on(load_params(params_file, {"train.stats_head": "auto", "task.type": "ner"}))
    assert not stats_head_on(load_params(params_file))
    with pytest.raises(ConfigError, match="stats_features"):
        load_params(params_file, {"train.stats_features": 0})


def test_the_predictor_hash_covers_the_statistics(two_versions, params_file, tmp_path):
    """Statistics versions share the frozen encoder: two with the same labels have the same
    weights file, so the hash audits and the registry compare must include the statistics."""
    from conftest import toy_frame
    from tasks.registry.store import Registry, weights_sha256

    params, first, *_ = two_versions
    more = split_batch(toy_frame(["weather", "music"], per_label=20, seed=5), "b-more", 0.3).train
    a = train_candidate(champion_dir=None, train_rows=first, out_dir=tmp_path / "a", params=params)
    b = train_candidate(champion_dir=a.path, train_rows=more, out_dir=tmp_path / "b", params=params)
    from tasks.registry.integrity import sha256_file

    assert sha256_file(Path(a.path) / "model.safetensors") == sha256_file(Path(b.path) / "model.safetensors")
    assert weights_sha256(a.path) != weights_sha256(b.path)
    reg = Registry(tmp_path / "models")
    version = reg.register(tmp_path / "b", {"batch_id": "b-more"})
    assert reg.metadata(version)["weights_sha256"] == weights_sha256(tmp_path / "b") == weights_sha256(reg.path(version))
    assert reg.find_weights(weights_sha256(a.path)) is None


def test_a_finished_statistics_candidate_is_reused_for_the_same_inputs(two_versions, tmp_path):
    params, first, second, v1, v2 = two_versions
    again = train_candidate(champion_dir=v1.path, train_rows=second, out_dir=v2.path, params=params)
    assert again.train == v2.train and again.path == v2.path
    other = load_params_with(params, {"train.stats_shrinkage": 0.5})
    changed = train_candidate(champion_dir=v1.path, train_rows=second, out_dir=tmp_path / "v2b", params=other)
    assert changed.train.inputs_sha256 != v2.train.inputs_sha256
    assert ClassStats.load(changed.path).shrinkage == 0.5      # the solver's setting applies to the lineage
    with pytest.raises(ValueError, match="keeps its feature map"):
        train_candidate(champion_dir=v1.path, train_rows=second, out_dir=tmp_path / "v2c",
                        params=load_params_with(params, {"train.stats_features": 32}))


def load_params_with(params, overrides):
    from tasks.core.config import with_overrides

    return with_overrides(params, overrides)


def test_one_row_per_label_solves_to_nearest_mean():
    stats = ClassStats.empty(hidden=8, features=16, bandwidth=1.0, shrinkage=0.01, seed=0)
    z = np.random.default_rng(1).normal(size=(3, 16))
    stats.add(z, ["a", "b", "c"])
    stats.solve()
    assert stats.logits(torch.as_tensor(z).float()).argmax(-1).tolist() == [0, 1, 2]


def test_the_exam_remembers_pooled_vectors_and_answers_the_same_from_them_but_serving_does_not(two_versions):
    from tasks.judge.evaluate import predict_scored
    from tasks.train.stats_head import vector_key

    params, first, second, v1, v2 = two_versions
    texts = list(first["text"][:6]) + ["never seen before pizza"]
    clf = load_classifier(v2.path)
    before = dict(clf.model.vectors)
    served = predict_scored(clf, texts, batch_size=4, max_length=32)
    assert clf.model.vectors.keys() == before.keys()  # answering traffic learns nothing
    examined = predict_scored(clf, texts, batch_size=4, max_length=32, remember=True)
    assert {vector_key(t, 32) for t in texts} <= set(clf.model.vectors)
    again = predict_scored(clf, texts, batch_size=3, max_length=32)  # all from the stored vectors now
    assert [a[0] for a in served] == [a[0] for a in examined] == [a[0] for a in again]
    assert [a[1] for a in again] == pytest.approx([a[1] for a in served], abs=1e-5)
