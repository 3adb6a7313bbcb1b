"""Crashing a fine-tune at a chosen optimizer step, shared by tests/tasks/test_resume.py
and tests/flows/test_conformance.py: in-process (`crash_at`, an exception from the step
hook) or for real (`sigkilled_at`, a forked child that SIGKILLs itself: no `finally`, no
`atexit`, no flushing, what the OOM killer leaves behind)."""

from __future__ import annotations

import os
import signal

# short, with every resumed part on: warm-up, early stopping on a carved dev share,
# distillation, checkpoints every 3 steps
TRAIN = {"epochs": 4, "batch_size": 8, "lr": 2e-3, "warmup_ratio": 0.2, "seed": 7, "precision": "fp32",
         "device": "cpu", "checkpoint_every": 3, "early_stopping_patience": 2, "distill_weight": 1.0}


class Crash(RuntimeError):
    pass


def crash_at(k: int):
    def on_step(step: int) -> None:
        if step == k:
            raise Crash(f"killed at step {k}")
    return on_step


def _die_at(k: int):
    def on_step(step: int) -> None:
        if step == k:
            os.kill(os.getpid(), signal.SIGKILL)
    return on_step


def _train_in_child(k: int, kwargs: dict) -> None:
    import torch

    from tasks.train.finetune import train_candidate

    torch.set_num_threads(1)  # the parent's setting, and no OpenMP pool across the fork
    train_candidate(on_step=_die_at(k), **kwargs)


def sigkilled_at(k: int, timeout: float = 600, **kwargs) -> int | None:
    """`train_candidate(**kwargs)` in a forked child (the parent's imports, no start-up
    cost) that SIGKILLs itself when optimizer step `k` is reached; its exit code
    (-SIGKILL when the kill landed, 0 when training ended first)."""
    import multiprocessing

    child = multiprocessing.get_context("fork").Process(target=_train_in_child, args=(k, kwargs))
    child.start()
    child.join(timeout)
    if child.exitcode is None:
        child.kill()
        child.join()
    return child.exitcode

