"""Crash safety: a run killed at step k and rerun ends with bitwise the same weights as
a run never interrupted; finished candidates appear only complete and are reused."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from tasks.train.checkpoint import FILE
from tasks.core.config import params_from_dict
from tasks.train.finetune import train_candidate
from tasks.intake.batch import split_batch
from tasks.train.model import load_classifier
from tasks.train.replay import ReplayBuffer

pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("one_torch_thread")]

TRAIN = {"epochs": 4, "batch_size": 8, "lr": 2e-3, "warmup_ratio": 0.2, "seed": 7, "precision": "fp32",
         "device": "cpu", "checkpoint_every": 3, "early_stopping_patience": 2, "distill_weight": 1.0}


class Crash(RuntimeError):
    pass


def crash_at(k: int):
    def on_step(step: int) -> None:
        if step == k:
            raise Crash(f"killed at step {k}")
    return on_step


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """A champion (so growth, replay and distillation are all on the resumed path) and
    the next batch."""
    from conftest import toy_frame

    tmp = tmp_path_factory.mktemp("resume")
    params = params_from_dict({"model": {"base": "tiny", "max_length": 16}, "replay": {"capacity": 30},
                               "train": TRAIN})
    first = split_batch(toy_frame(["weather", "music"], per_label=12, seed=0), "b1", 0.3).train
    champion = train_candidate(champion_dir=None, train_rows=first, out_dir=tmp / "champion", params=params)
    second = split_batch(toy_frame(["food", "weather"], per_label=12, seed=1), "b2", 0.3).train
    return params, champion.path, second


def assert_same_weights(a, b):
    sa, sb = load_classifier(a).model.state_dict(), load_classifier(b).model.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


@pytest.mark.parametrize("k", [4, 7])
def test_resume_after_a_crash_is_bitwise_identical(setting, tmp_path, k):
    params, champion, rows = setting
    whole = train_candidate(champion_dir=champion, train_rows=rows, out_dir=tmp_path / "whole", params=params)
    assert whole.train.steps > k and whole.train.dev_losses  # dev carved, early stopping armed

    out = tmp_path / "crashed"
    with pytest.raises(Crash):
        train_candidate(champion_dir=champion, train_rows=rows, out_dir=out, params=params, on_step=crash_at(k))
    assert not out.exists(), "an unfinished candidate must never be in place"
    assert (tmp_path / "crashed.run" / FILE).exists()

    resumed = train_candidate(champion_dir=champion, train_rows=rows, out_dir=out, params=params)
    assert resumed.train.resumed_from_step == k - k % params.train.checkpoint_every
    assert_same_weights(whole.path, resumed.path)
    assert resumed.train.losses == whole.train.losses
    assert resumed.train.dev_losses == whole.train.dev_losses
    assert (resumed.train.new_samples, resumed.train.replay_samples) == (whole.train.new_samples,
                                                                         whole.train.replay_samples)
    pd.testing.assert_frame_equal(ReplayBuffer.load(whole.path).rows, ReplayBuffer.load(resumed.path).rows)
    assert not (tmp_path / "crashed.run").exists(), "checkpoints are removed once the candidate is in place"
    assert not (tmp_path / "crashed.tmp").exists()


def test_checkpoint_of_other_inputs_is_not_resumed(setting, tmp_path):
    params, champion, rows = setting
    out = tmp_path / "c"
    with pytest.raises(Crash):
        train_candidate(champion_dir=champion, train_rows=rows, out_dir=out, params=params, on_step=crash_at(5))
    other = params_from_dict({"model": {"base": "tiny", "max_length": 16}, "replay": {"capacity": 30},
                              "train": {**TRAIN, "lr": 1e-3}})
    fresh = train_candidate(champion_dir=champion, train_rows=rows, out_dir=out, params=other)
    assert fresh.train.resumed_from_step == 0


def test_finished_candidate_is_reused_not_retrained(setting, tmp_path):
    params, champion, rows = setting
    first = train_candidate(champion_dir=champion, train_rows=rows, out_dir=tmp_path / "c", params=params)
    steps = []
    again = train_candidate(champion_dir=champion, train_rows=rows, out_dir=tmp_path / "c", params=params,
                            on_step=steps.append)
    assert steps == [] and again.train == first.train
    assert again.labels == first.labels and again.new_labels == first.new_labels == ["food"]
    # other inputs in the same place are trained, not mistaken for the finished one
    other = params_from_dict({"model": {"base": "tiny", "max_length": 16}, "replay": {"capacity": 30},
                              "train": {**TRAIN, "seed": 8}})
    retrained = train_candidate(champion_dir=champion, train_rows=rows, out_dir=tmp_path / "c", params=other,
                                on_step=steps.append)
    assert steps and retrained.train.inputs_sha256 != first.train.inputs_sha256


# --- the same loop for a tagger (task.type: ner) ---------------------------------------

@pytest.fixture(scope="module")
def tagger_setting(tmp_path_factory):
    """A champion tagger and a batch with a new entity type: growth, replay, distillation
    and frozen lower layers all on the resumed path."""
    from conftest import toy_ner_frame

    from tasks.ner.train import TAGGERS

    tmp = tmp_path_factory.mktemp("resume-ner")
    params = params_from_dict({"task": {"type": "ner"}, "model": {"base": "tiny", "max_length": 24},
                               "replay": {"capacity": 30}, "train": {**TRAIN, "freeze_layers": 1}})
    first = toy_ner_frame(["PER", "LOC"], sentences=30, seed=0).assign(slice="A", batch_id="a")
    champion = train_candidate(champion_dir=None, train_rows=first, out_dir=tmp / "champion", params=params,
                               training=TAGGERS)
    second = toy_ner_frame(["ORG"], sentences=24, seed=1).assign(slice="B", batch_id="b")
    return params, champion.path, second, TAGGERS


def test_a_killed_tagger_fine_tune_resumes_bitwise_and_a_finished_one_is_reused(tagger_setting, tmp_path):
    from tasks.ner.model import load_tagger

    params, champion, rows, training = tagger_setting
    kw = dict(champion_dir=champion, train_rows=rows, params=params, training=training)
    whole = train_candidate(out_dir=tmp_path / "whole", **kw)
    assert whole.train.steps > 5 and whole.train.replay_rows > 0 and whole.new_labels == ["ORG"]
    out = tmp_path / "crashed"
    with pytest.raises(Crash):
        train_candidate(out_dir=out, on_step=crash_at(5), **kw)
    assert not out.exists() and (tmp_path / "crashed.run" / FILE).exists()
    resumed = train_candidate(out_dir=out, **kw)
    assert resumed.train.resumed_from_step == 3
    sa, sb = load_tagger(whole.path).model.state_dict(), load_tagger(resumed.path).model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert resumed.train.losses == whole.train.losses
    # frozen: the embeddings did not move from the champion's
    start = load_tagger(champion).model.state_dict()
    name = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(sa[name], start[name])
    again = train_candidate(out_dir=out, on_step=crash_at(1), **kw)  # finished: reused, not retrained
    assert again.train.inputs_sha256 == resumed.train.inputs_sha256
