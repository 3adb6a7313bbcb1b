"""The CUDA path: bf16 autocast on the GPU, same loop, candidate back on the CPU."""

from __future__ import annotations

import pytest
import torch

from tasks.core.config import ModelConfig, TrainConfig
from tasks.train.finetune import TrainSet, finetune, pick_device
from tasks.train.model import load_base

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.cuda.is_available() is False")


def test_finetune_on_cuda_with_bf16(toy):
    rows = toy(["weather", "music", "food"], per_label=20)
    cfg = TrainConfig(epochs=10, batch_size=16, lr=2e-3, warmup_ratio=0.0, seed=7, precision="auto", device="auto")
    assert pick_device(cfg)[0].type == "cuda"
    clf = load_base("tiny", ["weather", "music", "food"], seed=0)
    report = finetune(clf, TrainSet(rows), cfg=cfg, model_cfg=ModelConfig(base="tiny", max_length=32))
    assert report.device == "cuda"
    assert report.precision == ("bfloat16" if torch.cuda.is_bf16_supported() else "fp32")
    assert report.peak_memory_kind == "cuda_allocated" and report.peak_memory_mb > 0
    assert report.losses[-1] < report.losses[0]
    assert next(clf.model.parameters()).device.type == "cpu"
