"""A plain PyTorch fine-tuning loop: the yardstick `benchmarks/overhead.py` holds Ratchet's
trainer (tasks/train/trainloop.py) against.

Same model and rows, the same batches in the same order (the trainer's length-bucketed
epochs, so the same padding), the same precision, optimizer, schedule and gradient
clipping, and nothing else: no dev loss, no early stopping, no checkpoints, no progress
bar, no loss read back to the host each step. Both are timed as whole calls (tokenizing
the rows included), so `trainer / bare` samples per second is what the trainer's own work
costs.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformers import get_linear_schedule_with_warmup

from tasks.core.config import TrainConfig
from tasks.train.model import Classifier
from tasks.train.trainloop import epoch_batches, pick_device, planned_epochs, planned_steps


def bare_finetune(clf: Classifier, rows: pd.DataFrame, cfg: TrainConfig, max_length: int) -> dict:
    """Train `clf` in place on `rows` (text, label); samples, steps, seconds, samples/s."""
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device, amp_dtype = pick_device(cfg)
    model = clf.model.to(device).train()
    ids = clf.tokenizer(list(rows["text"]), truncation=True, max_length=max_length)["input_ids"]
    targets = torch.tensor([model.config.label2id[label] for label in rows["label"]])
    lengths = np.array([len(x) for x in ids])
    total, epochs = planned_steps(len(ids), cfg), planned_epochs(len(ids), cfg)
    try:  # the trainer's optimizer implementation: fused where torch has it
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    steps = samples = 0
    for epoch in range(epochs):
        for idx in epoch_batches(lengths, cfg, epoch)[: total - steps]:
            batch = clf.tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
            with autocast:
                logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            F.cross_entropy(logits.float(), targets[idx].to(device)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            steps, samples = steps + 1, samples + len(idx)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    model.eval().to("cpu")
    return {"samples": samples, "steps": steps, "seconds": round(seconds, 2),
            "samples_per_s": round(samples / max(seconds, 1e-9), 1), "device": device.type,
            "precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32"}
