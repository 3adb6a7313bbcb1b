"""The training loop of the finetune stage: one classifier, one set of rows, one device.

`finetune` trains a classifier in place on new rows mixed with replayed rows (prepared
by tasks/train/finetune.py). Batches are length-bucketed and padded per batch (short
utterances are the common case, so this is most of the CPU speed); AdamW (fused where
available, head and encoder at their own learning rates) with linear warm-up/decay and
gradient clipping; at least `train.min_steps` steps however small the batch; optional LwF distillation on
replayed rows and frozen lower layers; early stopping on a dev split keeping the best
epoch's weights; checkpoints every N steps that a rerun resumes from, bitwise.
Device and precision are chosen in `pick_device` only. It knows nothing about Prefect.

The same loop runs data-parallel (`train.processes` > 1, tasks/train/parallel.py starts
the processes): every rank walks the same batches in the same order and trains on its
share of each one (`idx[rank::world]`), the gradients are averaged over the ranks (one
all-reduce of a flat tensor per step, so every rank holds bitwise the same weights), and
the steps, the schedule and the data order are those of one process; rank 0 writes the
checkpoints (with every rank's RNG state) and the trained weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import resource
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from transformers import get_linear_schedule_with_warmup

from tasks.train.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint
from tasks.core.config import ModelConfig, TrainConfig
from tasks.train.distill import distill_loss
from tasks.train.forgetting import REBALANCE_LR_SCALE, OldRows, align_new_rows, balanced_indices, mask_absent_old, rebalance_head
from tasks.train.model import Classifier, count_truncated, freeze_lower_layers

log = logging.getLogger(__name__)
LOG_EVERY = 50  # steps between a log line (and a read-back of the losses to the host)
# train keys that are left out of a run's fingerprint at these (their default) values
LATER_KEYS = {"processes": 1, "freeze_old_head": False, "mask_absent_old": False, "align_new_head": False,
              "rebalance_head_epochs": 0, "stats_head": "off", "stats_features": 4096, "stats_bandwidth": 1.5,
              "stats_shrinkage": 0.01}


@dataclass(frozen=True)
class TrainSet:
    """What one fine-tune learns from: new rows first, then `replay_rows` replayed ones."""

    rows: pd.DataFrame                  # text, label
    replay_rows: int = 0
    dev: pd.DataFrame | None = None     # early stopping; never trained on
    teacher: np.ndarray | None = None   # champion logits for the last len(teacher) rows (replayed)
    warm: bool = False                  # starts from a promoted version (train.encoder_lr_scale applies)
    old_rows: int = 0                   # head rows the champion had (tasks/train/forgetting.py)

    @property
    def new_rows(self) -> int:
        return len(self.rows) - self.replay_rows


@dataclass(frozen=True)
class TrainReport:
    device: str
    precision: str
    steps: int
    epochs: int
    samples: int
    new_samples: int
    replay_samples: int
    new_rows: int
    replay_rows: int
    seconds: float
    samples_per_s: float
    peak_memory_mb: float
    peak_memory_kind: str               # cuda_allocated | process_rss
    final_loss: float | None
    dev_loss: float | None              # of the weights kept
    stopped_early: bool
    resumed_from_step: int
    losses: list[float] = field(default_factory=list)
    dev_losses: list[float] = field(default_factory=list)
    inputs_sha256: str = ""
    truncated_texts: int = 0            # training rows longer than model.max_length tokens, cut
    processes: int = 1                  # data-parallel world size (train.processes)
    samples_per_s_per_process: float = 0.0
    # torch intra-op threads of the process that trained: on CPU the same seed gives the same
    # weights bitwise only with the same count (reduction order), so an audit replays it
    threads: int = 0
    # of `seconds`: the dev loss for early stopping, and writing checkpoints
    dev_s: float = 0.0
    checkpoint_s: float = 0.0
    # train.rebalance_head_epochs: head-only steps on the class-balanced subset
    rebalance_steps: int = 0
    # train.align_new_head: the factor the new head rows were scaled by (None: not applied)
    head_alignment: float | None = None
    # train.stats_head: rows added to the class statistics (forward passes, no optimizer
    # step), and the statistics' size on disk
    stats_rows: int = 0
    stats_bytes: int = 0

    def to_dict(self) -> dict:
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


def epoch_batches(lengths: np.ndarray, cfg: TrainConfig, epoch: int) -> list[np.ndarray]:
    """An epoch's order depends on (seed, epoch) only, so a resumed run re-derives it."""
    return length_bucketed_batches(lengths, cfg.batch_size, np.random.default_rng([cfg.seed, epoch]))


def planned_epochs(n_rows: int, cfg: TrainConfig) -> int:
    """`train.epochs`, or more when that gives fewer than `train.min_steps` steps."""
    per_epoch = max(math.ceil(n_rows / cfg.batch_size), 1)
    return max(cfg.epochs, math.ceil(cfg.min_steps / per_epoch))


def planned_steps(n_rows: int, cfg: TrainConfig) -> int:
    total = math.ceil(n_rows / cfg.batch_size) * planned_epochs(n_rows, cfg)
    return min(total, cfg.max_steps) if cfg.max_steps else total


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, warm: bool) -> torch.optim.Optimizer:
    """AdamW over the trainable weights (frozen layers get no state): the encoder at
    `lr` (x `encoder_lr_scale` when `warm`, i.e. from a promoted version), the head at
    `lr` x `head_lr_scale`; no weight decay on biases and norms."""
    encoder = {id(p) for p in model.base_model.parameters()}
    scale = {True: cfg.encoder_lr_scale if warm else 1.0, False: cfg.head_lr_scale}
    groups = []
    for in_encoder in (True, False):
        trainable = [p for p in model.parameters() if p.requires_grad and (id(p) in encoder) == in_encoder]
        for decay in (True, False):
            params = [p for p in trainable if (p.ndim >= 2) == decay]
            if params:
                groups.append({"params": params, "lr": cfg.lr * scale[in_encoder],
                               "weight_decay": cfg.weight_decay if decay else 0.0})
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.lr)


class SequenceLabels:
    """How the loop encodes rows, batches them and scores them for one kind of head: here
    a sentence classifier (one label per text). A task type with another head (a
    tagger's label per word: tasks/ner/train.py) passes its own object with these methods
    to `finetune`; the loop itself (order, steps, checkpoints, early stopping,
    distillation, freezing) is the same for every task type."""

    columns = ["text", "label"]

    def encode(self, clf: Classifier, frame: pd.DataFrame, max_length: int) -> tuple[list[list[int]], np.ndarray]:
        label2id = clf.model.config.label2id
        ids = clf.tokenizer(list(frame["text"]), truncation=True, max_length=max_length)["input_ids"]
        return ids, np.array([label2id[label] for label in frame["label"]], dtype=np.int64)

    def collate(self, clf: Classifier, ids, targets, idx, device) -> tuple[dict, torch.Tensor]:
        padded = clf.tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
        return {k: v.to(device) for k, v in padded.items()}, torch.as_tensor(targets[idx], device=device)

    def loss(self, logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, reduction=reduction)

    def units(self, target: torch.Tensor) -> int:
        """What a summed loss is averaged over: rows."""
        return int(target.shape[0])

    def teacher(self, logits: np.ndarray | None):
        return None if logits is None else torch.as_tensor(logits, dtype=torch.float32)

    def distill(self, logits, target, taught: np.ndarray, rows: np.ndarray, teacher, temperature: float):
        """The distillation term on the taught rows of a batch (`rows`: their teacher rows)."""
        mask = torch.as_tensor(taught, device=logits.device)
        return distill_loss(logits[mask], teacher[torch.as_tensor(rows)].to(logits.device), temperature)

    def hash_rows(self, h, frame: pd.DataFrame | None) -> None:
        frame = frame if frame is not None else pd.DataFrame(columns=self.columns)
        h.update(pd.util.hash_pandas_object(frame[self.columns], index=False).to_numpy().tobytes())

    def truncated(self, clf: Classifier, frame: pd.DataFrame, max_length: int) -> int:
        return count_truncated(clf.tokenizer, list(frame["text"]), max_length)


SEQUENCE = SequenceLabels()


def fingerprint(clf: Classifier, data: TrainSet, cfg: TrainConfig, model_cfg: ModelConfig, head=SEQUENCE) -> str:
    """Identifies the inputs of a run (starting weights included); a checkpoint or a
    finished candidate from other inputs is never reused."""
    # keys added later count only when set, so earlier candidates keep their fingerprint
    train = {k: v for k, v in asdict(cfg).items() if LATER_KEYS.get(k, object()) != v}
    parts = [train, asdict(model_cfg), clf.labels, data.replay_rows, data.warm]
    if cfg.freeze_old_head or cfg.mask_absent_old or cfg.align_new_head or cfg.rebalance_head_epochs:
        parts.append(data.old_rows)
    h = hashlib.sha256(json.dumps(parts).encode())
    for name, tensor in clf.model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    for frame in (data.rows, data.dev):
        head.hash_rows(h, frame)
    if data.teacher is not None:
        for part in (data.teacher if isinstance(data.teacher, list) else [data.teacher]):
            h.update(np.ascontiguousarray(part).tobytes())
    return h.hexdigest()


def _fresh_loop() -> dict[str, Any]:
    return {"epoch": 0, "batch": 0, "step": 0, "losses": [], "dev_losses": [], "best_loss": None,
            "best_state": None, "bad_epochs": 0, "stopped": False, "new_samples": 0, "replay_samples": 0,
            "seconds": 0.0, "dev_s": 0.0, "checkpoint_s": 0.0}


@torch.inference_mode()
def _dev_loss(clf: Classifier, dev: tuple, device: torch.device, autocast, head) -> float:
    ids, labels = dev
    clf.model.eval()
    total, units = 0.0, 0
    for start in range(0, len(ids), 128):
        idx = np.arange(start, min(start + 128, len(ids)))
        inputs, target = head.collate(clf, ids, labels, idx, device)
        with autocast:
            logits = clf.model(**inputs).logits
        total += float(head.loss(logits, target, reduction="sum"))
        units += head.units(target)
    clf.model.train()
    return round(total / max(units, 1), 6)


def _end_epoch(loop: dict, clf: Classifier, dev, cfg: TrainConfig, device, autocast, head) -> None:
    """Dev loss; keep the best weights; stop after `patience` epochs without a better one."""
    if dev is None:
        return
    started = time.perf_counter()
    loss = _dev_loss(clf, dev, device, autocast, head)
    loop["dev_s"] = loop.get("dev_s", 0.0) + time.perf_counter() - started
    loop["dev_losses"].append(loss)
    if loop["best_loss"] is None or loss < loop["best_loss"]:
        loop["best_loss"], loop["bad_epochs"] = loss, 0
        if cfg.early_stopping_patience:
            loop["best_state"] = {k: v.detach().to("cpu", copy=True) for k, v in clf.model.state_dict().items()}
    else:
        loop["bad_epochs"] += 1
    if cfg.early_stopping_patience and loop["bad_epochs"] >= cfg.early_stopping_patience:
        loop["stopped"] = True


def _loss(model, inputs, target, idx, data: TrainSet, teacher, cfg: TrainConfig, head) -> torch.Tensor:
    logits = model(**inputs).logits
    if cfg.mask_absent_old and data.old_rows:
        new_row = torch.as_tensor(idx < data.new_rows, device=logits.device)
        loss = head.loss(mask_absent_old(logits, target, new_row, data.old_rows), target)
    else:
        loss = head.loss(logits, target)
    if teacher is not None:
        start = len(data.rows) - len(teacher)  # the teacher covers the last rows (replayed, or all)
        taught = idx >= start
        if taught.any():
            # per-row weight: a taught row counts as much as in the cross-entropy's mean
            share = float(taught.sum()) / len(idx)
            term = head.distill(logits, target, taught, idx[taught] - start, teacher, cfg.distill_temperature)
            loss = loss + cfg.distill_weight * share * term
    return loss


def _progress(total: int, initial: int, show: bool = True):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm comes with transformers; rich is the fallback the CLI already has
        from rich.progress import tqdm
    # disable=None: a bar on a terminal, silence in logs and tests
    return tqdm(total=total, initial=initial, desc="finetune", unit="step", disable=None if show else True, leave=False)


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1), "cuda_allocated"
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "process_rss"


def _all_reduce_grads(model: torch.nn.Module, world: int) -> None:
    """The mean of every rank's gradients: each rank gathers all of them (one flat tensor
    a rank) and sums them in rank order, so every rank, in every run, holds bitwise the
    same gradients and steps to the same weights (a transport's own reduction order is
    not fixed)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    parts = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(parts, flat)
    flat = torch.stack(parts).sum(0) / world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def _optimize(loss: torch.Tensor, model: torch.nn.Module, opt, sched, cfg: TrainConfig, world: int = 1) -> None:
    loss.backward()
    if world > 1:
        _all_reduce_grads(model, world)
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


def _mine(idx: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This rank's share of a batch (the whole of one too small to share)."""
    return idx[rank::world] if len(idx) >= world else idx


def _mean_over_ranks(loss: torch.Tensor, world: int) -> torch.Tensor:
    if world == 1:
        return loss
    total = loss.detach().clone()
    dist.all_reduce(total)
    return total / world


def _ranks_rng(world: int) -> list[dict]:
    """Every rank's RNG state (dropout differs per rank), for rank 0's checkpoint."""
    states: list = [None] * world
    dist.all_gather_object(states, rng_state())
    return states


def _flush(loop: dict, pending: list[torch.Tensor]) -> None:
    """Read the steps' losses back to the host in one go: on a GPU, reading each step's
    would make the host wait for the device every step."""
    if pending:
        loop["losses"] += [round(v, 5) for v in torch.stack(pending).float().tolist()]
        pending.clear()


def _record(loop: dict, idx: np.ndarray, loss: torch.Tensor, new_rows: int, started: float, bar, total: int,
            pending: list[torch.Tensor]) -> None:
    """Advance the loop's position and counters after a step; progress bar and log every
    LOG_EVERY steps (when the losses are read back)."""
    replayed = int((idx >= new_rows).sum())
    loop.update(batch=loop["batch"] + 1, step=loop["step"] + 1, seconds=time.perf_counter() - started,
                new_samples=loop["new_samples"] + len(idx) - replayed, replay_samples=loop["replay_samples"] + replayed)
    pending.append(loss.detach())
    bar.update(1)
    if loop["step"] % LOG_EVERY == 0 or loop["step"] == total:
        _flush(loop, pending)
        rate = (loop["new_samples"] + loop["replay_samples"]) / max(loop["seconds"], 1e-9)
        bar.set_postfix(loss=loop["losses"][-1], samples_s=round(rate))
        log.info("epoch %d step %d/%d loss %.4f  %.0f samples/s", loop["epoch"] + 1, loop["step"], total,
                 loop["losses"][-1], rate)


def finetune(clf: Classifier, data: TrainSet, *, cfg: TrainConfig, model_cfg: ModelConfig,
             run_dir=None, on_step: Callable[[int], None] | None = None, head=SEQUENCE,
             rank: int = 0, world: int = 1) -> TrainReport:
    """Train `clf` in place. With `run_dir`, checkpoint there every `train.checkpoint_every`
    steps and resume from a checkpoint of the same inputs. `on_step(step)` is called after
    each step (and its checkpoint). `head`: how rows become inputs and targets
    (`SequenceLabels` for a sentence classifier; a tagger's own). `rank` of `world`: this
    process's place in a data-parallel run (the process group is initialised)."""
    torch.manual_seed(cfg.seed)
    device, amp_dtype = pick_device(cfg)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    model = clf.model.to(device).train()
    freeze_lower_layers(model, cfg.freeze_layers)
    if world > 1:  # every rank starts from rank 0's weights
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, 0)
    kept = OldRows(model, data.old_rows) if cfg.freeze_old_head and data.old_rows else None
    ids, labels = head.encode(clf, data.rows, model_cfg.max_length)
    lengths = np.array([len(x) for x in ids])
    total, epochs = planned_steps(len(ids), cfg), planned_epochs(len(ids), cfg)
    opt = build_optimizer(model, cfg, data.warm)
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    dev = head.encode(clf, data.dev, model_cfg.max_length) if data.dev is not None and len(data.dev) else None
    use_teacher = data.teacher is not None and cfg.distill_weight > 0 and len(data.teacher) > 0
    teacher = head.teacher(data.teacher) if use_teacher else None
    key = fingerprint(clf, data, cfg, model_cfg, head)
    every = cfg.checkpoint_every if run_dir else 0
    loop = (load_checkpoint(run_dir, fingerprint=key, model=model, optimizer=opt, scheduler=sched)
            if every else None) or _fresh_loop()
    resumed = loop["step"]
    if world > 1 and loop.get("rank_rng"):
        restore_rng(loop["rank_rng"][rank])  # load_checkpoint restored rank 0's
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter() - loop["seconds"]
    bar, pending = _progress(total, resumed, show=rank == 0), []
    while loop["epoch"] < epochs and not loop["stopped"]:
        batches = epoch_batches(lengths, cfg, loop["epoch"])
        while loop["batch"] < len(batches) and loop["step"] < total:
            idx = batches[loop["batch"]]
            mine = _mine(idx, rank, world)
            inputs, target = head.collate(clf, ids, labels, mine, device)
            with autocast:
                loss = _loss(model, inputs, target, mine, data, teacher, cfg, head)
            _optimize(loss, model, opt, sched, cfg, world)
            if kept:
                kept.restore(model)
            _record(loop, idx, _mean_over_ranks(loss, world), data.new_rows, started, bar, total, pending)
            if every and loop["step"] % every == 0:
                _flush(loop, pending)
                if world > 1:
                    loop["rank_rng"] = _ranks_rng(world)
                if rank == 0:
                    started_save = time.perf_counter()
                    save_checkpoint(run_dir, fingerprint=key, model=model, optimizer=opt, scheduler=sched, loop=loop)
                    loop["checkpoint_s"] = loop.get("checkpoint_s", 0.0) + time.perf_counter() - started_save
            if on_step:
                on_step(loop["step"])
        _flush(loop, pending)
        # also after a max_steps cut, and after resuming from a checkpoint taken at the
        # epoch's last step, so both runs see the same dev losses
        _end_epoch(loop, clf, dev, cfg, device, autocast, head)
        if world > 1:  # rank 0 decides; the others follow, whatever their last bits of dev loss
            decided = [loop["stopped"]]
            dist.broadcast_object_list(decided, 0)
            loop["stopped"] = decided[0]
        loop.update(epoch=loop["epoch"] + 1, batch=0)
        if loop["step"] >= total:
            break
    bar.close()
    report = replace(_finish(clf, data, loop, device, amp_dtype, resumed, key), processes=world)
    if cfg.rebalance_head_epochs and data.old_rows and data.replay_rows:
        report = replace(report, rebalance_steps=_rebalance(clf, data, ids, labels, cfg, kept, device, autocast))
    if cfg.align_new_head:
        report = replace(report, head_alignment=align_new_rows(clf.model, data.old_rows))
    report = replace(report, samples_per_s_per_process=round(report.samples_per_s / world, 1))
    cut = head.truncated(clf, data.rows, model_cfg.max_length)
    if cut:
        log.info("%d of %d training texts are longer than model.max_length (%d tokens) and were truncated",
                 cut, len(data.rows), model_cfg.max_length)
    return replace(report, truncated_texts=cut)


def _rebalance(clf: Classifier, data: TrainSet, ids, labels: np.ndarray, cfg: TrainConfig, kept, device,
               autocast) -> int:
    """Classifier re-balancing (tasks/train/forgetting.py): the trained encoder's pooled
    features of a class-balanced subset of the rows, then the head alone on them."""
    rows = balanced_indices(np.asarray(labels), data.new_rows, cfg.seed)
    model = clf.model.to(device).eval()
    feats = []
    with torch.no_grad():
        for start in range(0, len(rows), 128):
            padded = clf.tokenizer.pad({"input_ids": [ids[i] for i in rows[start:start + 128]]}, return_tensors="pt")
            with autocast:
                out = model.base_model(**{k: v.to(device) for k, v in padded.items()})
            feats.append(out.pooler_output.float())
    features = torch.cat(feats)
    steps = rebalance_head(model, features, torch.as_tensor(np.asarray(labels)[rows], device=device),
                           epochs=cfg.rebalance_head_epochs, lr=cfg.lr * cfg.head_lr_scale * REBALANCE_LR_SCALE,
                           batch_size=cfg.batch_size, seed=cfg.seed, kept=kept)
    model.eval().to("cpu")
    return steps


def _finish(clf, data: TrainSet, loop: dict, device, amp_dtype, resumed: int, key: str) -> TrainReport:
    dev_loss = loop["dev_losses"][-1] if loop["dev_losses"] else None
    if loop["best_state"] is not None:
        clf.model.load_state_dict(loop["best_state"])
        dev_loss = loop["best_loss"]
    peak, kind = _peak_memory(device)
    clf.model.eval().to("cpu")
    samples = loop["new_samples"] + loop["replay_samples"]
    seconds = loop["seconds"]
    return TrainReport(
        device=device.type, precision=str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
        steps=loop["step"], epochs=loop["epoch"], samples=samples, new_samples=loop["new_samples"],
        replay_samples=loop["replay_samples"], new_rows=data.new_rows, replay_rows=data.replay_rows,
        seconds=round(seconds, 2), samples_per_s=round(samples / max(seconds, 1e-9), 1),
        peak_memory_mb=peak, peak_memory_kind=kind,
        final_loss=loop["losses"][-1] if loop["losses"] else None, dev_loss=dev_loss,
        stopped_early=loop["stopped"], resumed_from_step=resumed, losses=loop["losses"],
        dev_losses=loop["dev_losses"], inputs_sha256=key, dev_s=round(loop.get("dev_s", 0.0), 2),
        checkpoint_s=round(loop.get("checkpoint_s", 0.0), 2),
    )
