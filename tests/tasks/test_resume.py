"""Crash safety of the training loop: a run killed at step k and rerun ends with bitwise
the same weights as a run never interrupted; a checkpoint of other inputs is not
resumed; finished candidates appear only complete and are reused. The loop is the same
for every task type: tests/flows/test_conformance.py SIGKILLs each kind's fine-tune."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from crashes import TRAIN, Crash, crash_at
from tasks.train.checkpoint import FILE
from tasks.core.config import params_from_dict
from tasks.train.finetune import train_candidate
from tasks.intake.batch import split_batch
from tasks.train.model import load_classifier
from tasks.train.replay import ReplayBuffer

pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("one_torch_thread")]


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

