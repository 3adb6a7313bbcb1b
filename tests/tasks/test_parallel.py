"""Data-parallel fine-tuning (`train.processes: 2`, gloo on this CPU) with the tiny model:
the 2-process candidate takes the 1-process candidate's steps (early stopping aside: the
dev losses differ a little) and reaches its accuracy;
a 2-process run SIGKILLed after a checkpoint resumes and ends where an uninterrupted
2-process run ends, bitwise (each rank steps its own copy of the weights: before it
did, spawn's shared tensors let both ranks step one storage, racing, and two runs ended
0.3% apart); the report says how it ran."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest
import torch

from crashes import TRAIN
from tasks.core.config import params_from_dict, with_overrides
from tasks.intake.batch import split_batch
from tasks.judge.evaluate import predict
from tasks.train.checkpoint import FILE
from tasks.train.finetune import train_candidate
from tasks.train.model import load_classifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TOLERANCE = 0.1  # exam accuracy, 2 processes vs 1, on ~20 held-out toy rows


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    from conftest import toy_frame

    tmp = tmp_path_factory.mktemp("parallel")
    params = params_from_dict({"model": {"base": "tiny", "max_length": 16}, "replay": {"capacity": 30},
                               "train": {**TRAIN, "epochs": 6}})
    first = split_batch(toy_frame(["weather", "music"], per_label=12, seed=0), "b1", 0.3).train
    champion = train_candidate(champion_dir=None, train_rows=first, out_dir=tmp / "champion", params=params)
    second = split_batch(toy_frame(["food", "weather", "music"], per_label=20, seed=1), "b2", 0.3)
    return params, champion.path, second


def accuracy(path, test) -> float:
    pred = predict(load_classifier(path), test["text"].tolist(), batch_size=32, max_length=16)
    return float((test["label"].values == pred).mean())


def test_two_processes_take_the_same_steps_and_reach_the_same_accuracy(setting, tmp_path):
    params, champion, batch = setting
    params = with_overrides(params, {"train.early_stopping_patience": 0, "train.epochs": 20})  # trained to the end
    one = train_candidate(champion_dir=champion, train_rows=batch.train, out_dir=tmp_path / "one", params=params)
    two = train_candidate(champion_dir=champion, train_rows=batch.train, out_dir=tmp_path / "two",
                          params=with_overrides(params, {"train.processes": 2}))
    assert (two.train.steps, two.train.epochs, two.train.samples) == (one.train.steps, one.train.epochs,
                                                                      one.train.samples)
    assert (two.train.new_samples, two.train.replay_samples) == (one.train.new_samples, one.train.replay_samples)
    assert two.train.processes == 2 and one.train.processes == 1
    assert two.train.samples_per_s_per_process == pytest.approx(two.train.samples_per_s / 2, abs=0.1)
    assert abs(accuracy(two.path, batch.test) - accuracy(one.path, batch.test)) <= TOLERANCE
    assert accuracy(two.path, batch.test) > 0.6
    assert two.labels == one.labels and not (tmp_path / "two.run").exists()


def _train(kwargs: dict) -> None:
    torch.set_num_threads(1)
    train_candidate(**kwargs)


def test_a_killed_two_process_run_resumes_to_where_an_uninterrupted_one_ends(setting, tmp_path):
    params, champion, batch = setting
    params = with_overrides(params, {"train.processes": 2, "train.checkpoint_every": 2, "train.epochs": 12,
                                     "train.early_stopping_patience": 0})
    kw = dict(champion_dir=champion, train_rows=batch.train, params=params)
    whole = train_candidate(out_dir=tmp_path / "whole", **kw)

    out, checkpoint = tmp_path / "killed", tmp_path / "killed.run" / FILE
    child = multiprocessing.get_context("fork").Process(target=_train, args=({**kw, "out_dir": out},))
    child.start()
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and child.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)  # the flow process dies; its ranks die with it
    child.join()
    assert child.exitcode == -signal.SIGKILL and checkpoint.exists() and not out.exists()

    resumed = train_candidate(out_dir=out, **kw)
    assert resumed.train.resumed_from_step >= 2 and resumed.train.steps == whole.train.steps
    a, b = load_classifier(whole.path).model.state_dict(), load_classifier(resumed.path).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert resumed.train.losses == whole.train.losses  # to the 5 decimals the report keeps
    assert predict(load_classifier(resumed.path), batch.test["text"].tolist(), batch_size=32, max_length=16) == \
        predict(load_classifier(whole.path), batch.test["text"].tolist(), batch_size=32, max_length=16)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason=f"{torch.cuda.device_count()} CUDA device(s): NCCL needs 2")
def test_two_gpus_train_with_nccl_like_one(setting, tmp_path):
    params, champion, batch = setting
    params = with_overrides(params, {"train.device": "cuda", "train.early_stopping_patience": 0, "train.epochs": 20})
    two = train_candidate(champion_dir=champion, train_rows=batch.train, out_dir=tmp_path / "two",
                          params=with_overrides(params, {"train.processes": 2}))
    assert two.train.device == "cuda" and two.train.processes == 2 and accuracy(two.path, batch.test) > 0.6
