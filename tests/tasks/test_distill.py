"""Distillation: a pure loss component, and it lowers forgetting on a two-task stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tasks.core.config import params_from_dict
from tasks.train.distill import distill_loss, teacher_logits
from tasks.train.finetune import train_candidate
from tasks.intake.batch import split_batch
from tasks.train.model import load_base, load_classifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_distill_loss_is_zero_when_student_matches_and_new_labels_get_nothing():
    teacher = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    same = torch.cat([teacher, torch.full((2, 2), -1e4)], dim=1)  # two new labels, no mass
    assert float(distill_loss(same, teacher, 2.0)) == pytest.approx(0.0, abs=1e-6)
    # mass moved to a new label on an old row is penalised even if old ratios are kept
    leaked = torch.cat([teacher, torch.full((2, 2), 5.0)], dim=1)
    assert float(distill_loss(leaked, teacher, 2.0)) > 0.1


def test_distill_loss_matches_kl_and_has_no_side_effects():
    torch.manual_seed(0)
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3)
    before = teacher.clone()
    loss = distill_loss(student, teacher, 1.0)
    p = F.softmax(teacher, -1)
    expected = (p * (p.log() - F.log_softmax(student, -1))).sum(-1).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    loss.backward()
    assert student.grad is not None and torch.equal(teacher, before)


def test_teacher_logits_shape_and_eval_mode():
    clf = load_base("tiny", ["a", "b"], seed=0)
    out = teacher_logits(clf, ["one", "two", "three"], max_length=16, batch_size=2)
    assert out.shape == (3, 2) and out.dtype == np.float32
    again = teacher_logits(clf, ["one", "two", "three"], max_length=16)
    assert np.allclose(out, again, atol=1e-6)  # eval mode: no dropout (padding may round differently)
    assert teacher_logits(clf, [], max_length=16).shape == (0, 2)


def _old_task_loss(path, rows) -> float:
    clf = load_classifier(path)
    enc = clf.tokenizer(list(rows["text"]), padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = clf.model(**enc).logits
    target = torch.tensor([clf.labels.index(label) for label in rows["label"]])
    return float(F.cross_entropy(logits, target))


def test_distillation_lowers_forgetting_on_a_two_task_stream(toy, tmp_path):
    """Task A then task B (new labels), the same small replay sample both ways: with the
    champion distilled on replayed rows, the loss on A's held-out rows rises less."""
    a = split_batch(toy(["weather", "music", "food"], per_label=20, seed=0), "A", 0.3)
    b = split_batch(toy(["travel", "bank", "sport"], per_label=20, seed=1), "B", 0.3)
    train = {"batch_size": 16, "lr": 2e-3, "warmup_ratio": 0.0, "seed": 7, "precision": "fp32", "device": "cpu"}
    base = {"model": {"base": "tiny", "max_length": 16}, "replay": {"capacity": 200, "ratio": 0.2}}
    champion = train_candidate(champion_dir=None, train_rows=a.train, out_dir=tmp_path / "a",
                               params=params_from_dict({**base, "train": {**train, "epochs": 30}}))
    before = _old_task_loss(champion.path, a.test)
    forgetting = {}
    for weight in (0.0, 2.0):
        params = params_from_dict({**base, "train": {**train, "epochs": 12, "distill_weight": weight}})
        cand = train_candidate(champion_dir=champion.path, train_rows=b.train, out_dir=tmp_path / f"b{weight}",
                               params=params)
        assert cand.train.replay_rows > 0
        forgetting[weight] = _old_task_loss(cand.path, a.test) - before
    assert forgetting[0.0] > 0, "the stream must make the plain fine-tune forget"
    assert forgetting[2.0] < forgetting[0.0], forgetting
