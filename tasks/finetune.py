"""Fine-tune: the champion (or a base encoder) learns the new batch plus replayed rows.

Training mixes the new batch's train rows with a sample from the replay buffer
(`replay.ratio` replay rows per new row), so earlier batches are rehearsed while the new
one is learned. Batches are length-bucketed and padded per batch (short utterances are
the common case, so this is most of the CPU speed), AdamW with linear warm-up/decay,
gradient clipping, seeded shuffling. Device selection lives in `pick_device` only.
The function knows nothing about Prefect: it takes rows and returns a trained model.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import get_linear_schedule_with_warmup

from tasks.config import ModelConfig, TrainConfig
from tasks.model import Classifier, grow_head, load_base, load_classifier, save_classifier
from tasks.replay import ReplayBuffer, new_buffer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainReport:
    device: str
    precision: str
    steps: int
    samples: int
    new_rows: int
    replay_rows: int
    seconds: float
    samples_per_s: float
    losses: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def pick_device(cfg: TrainConfig) -> tuple[torch.device, torch.dtype | None]:
    """CUDA when present (bf16 autocast), else CPU (bf16 autocast where the CPU has it)."""
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    device = torch.device("cuda" if use_cuda else "cpu")
    if cfg.precision == "fp32":
        return device, None
    if cfg.precision == "bf16":
        return device, torch.bfloat16
    if use_cuda:
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    cpu_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return device, torch.bfloat16 if cpu_bf16 else None


def length_bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle, sort by length inside windows of 50 batches, cut, shuffle the batches:
    rows of similar length share a batch, so little compute goes to padding."""
    order = rng.permutation(len(lengths))
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.lr)


def training_rows(new_rows: pd.DataFrame, replay_rows: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([new_rows, replay_rows], ignore_index=True)[["text", "label"]]


def finetune(clf: Classifier, rows: pd.DataFrame, *, replay_rows: int, cfg: TrainConfig,
             model_cfg: ModelConfig) -> TrainReport:
    """Train `clf` in place on `rows` (new rows first, then `replay_rows` replayed ones)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device, amp_dtype = pick_device(cfg)
    model = clf.model.to(device).train()
    label2id = model.config.label2id
    enc = clf.tokenizer(list(rows["text"]), truncation=True, max_length=model_cfg.max_length)
    ids = enc["input_ids"]
    labels = np.array([label2id[label] for label in rows["label"]])
    lengths = np.array([len(x) for x in ids])
    steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    opt = _optimizer(model, cfg)
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    losses, started, step = [], time.perf_counter(), 0
    for epoch in range(cfg.epochs):
        for batch in length_bucketed_batches(lengths, cfg.batch_size, rng):
            padded = clf.tokenizer.pad({"input_ids": [ids[i] for i in batch]}, return_tensors="pt")
            inputs = {k: v.to(device) for k, v in padded.items()}
            target = torch.as_tensor(labels[batch], device=device)
            with autocast:
                loss = model(**inputs, labels=target).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            losses.append(round(float(loss.detach()), 5))
            if step % 20 == 0 or step == total:
                rate = step * cfg.batch_size / (time.perf_counter() - started)
                log.info("epoch %d step %d/%d loss %.4f  %.0f samples/s", epoch + 1, step, total, losses[-1], rate)
    model.eval().to("cpu")
    seconds = time.perf_counter() - started
    return TrainReport(
        device=device.type, precision=str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
        steps=step, samples=len(rows) * cfg.epochs, new_rows=len(rows) - replay_rows,
        replay_rows=replay_rows, seconds=round(seconds, 2),
        samples_per_s=round(len(rows) * cfg.epochs / max(seconds, 1e-9), 1), losses=losses,
    )


@dataclass(frozen=True)
class Candidate:
    path: str
    labels: list[str]
    new_labels: list[str]
    train: TrainReport


def train_candidate(*, champion_dir, train_rows: pd.DataFrame, out_dir, params) -> Candidate:
    """The finetune stage: champion (or base) + new rows + replay sample -> candidate dir.

    The candidate directory holds the model and the replay buffer its successor will
    use: the champion's buffer with this batch's train rows offered to it."""
    seed = params.train.seed
    batch_labels = sorted(train_rows["label"].astype(str).unique())
    if champion_dir is None:
        clf = load_base(params.model.base, batch_labels, seed)
        buffer = new_buffer(params.replay.strategy, capacity=params.replay.capacity, seed=seed)
        new_labels = batch_labels
    else:
        clf = load_classifier(champion_dir)
        buffer = ReplayBuffer.load(champion_dir)
        new_labels = [label for label in batch_labels if label not in clf.labels]
        clf = grow_head(clf, new_labels, seed)
    replay = buffer.sample(int(round(params.replay.ratio * len(train_rows))))
    report = finetune(clf, training_rows(train_rows, replay), replay_rows=len(replay),
                      cfg=params.train, model_cfg=params.model)
    buffer.add(train_rows)
    out_dir = Path(out_dir)
    save_classifier(clf, out_dir)
    buffer.save(out_dir)
    (out_dir / "train_report.json").write_text(json.dumps(report.to_dict(), indent=2))
    return Candidate(str(out_dir), clf.labels, new_labels, report)


# --- Prefect edge ------------------------------------------------------------------
from prefect import task  # noqa: E402


@task(name="finetune")
def finetune_task(champion_dir, train_rows: pd.DataFrame, out_dir, params) -> Candidate:
    return train_candidate(champion_dir=champion_dir, train_rows=train_rows, out_dir=out_dir, params=params)


def main() -> None:
    """dvc stage `finetune`: parent (or base) + audited batch + replay -> build/finetune/."""
    from tasks import pipeline

    p = pipeline.params()
    out = pipeline.stage_dir("finetune")
    candidate = train_candidate(champion_dir=pipeline.parent_dir(p), train_rows=pipeline.split_frames()["train"],
                                out_dir=out / "candidate", params=p)
    report = candidate.train.to_dict()
    pd.DataFrame({"step": range(1, len(report["losses"]) + 1), "loss": report.pop("losses")}).to_csv(
        out / "loss.csv", index=False)
    pipeline.write_json(out / "metrics.json", report)


if __name__ == "__main__":
    main()
