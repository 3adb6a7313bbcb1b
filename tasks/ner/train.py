"""Fine-tune a tagger: the finetune stage of the path for `task.type: ner`.

The champion tagger (its head grown for new entity types) or a base encoder learns the
batch's train sentences plus a replay sample of past sentences. It reuses the
classification loop's pieces: device and precision choice, length-bucketed batches
seeded by (seed, epoch), AdamW with warm-up/decay and clipping, the dev carve, early
stopping on dev loss keeping the best epoch, the `TrainReport`, the seeded replay
buffer (sentences are stored in it as JSON, with their set of entity types as the
"label", so `class_balanced` balances over entity-type combinations), and the
candidate directory written atomically. Not reused: step checkpoints and distillation.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformers import get_linear_schedule_with_warmup

from tasks.config import ModelConfig, Params, TrainConfig
from tasks.finetune import Candidate, _write_atomically, dev_split
from tasks.model import Classifier
from tasks.ner.model import IGNORE, align_labels, encode_words, grow_types, load_base_tagger, load_tagger
from tasks.ner.tags import labels_for, types_of
from tasks.replay import COLUMNS, ReplayBuffer, derive_buffer
from tasks.trainloop import TrainReport, _optimize, _optimizer, _peak_memory, epoch_batches, pick_device, planned_steps

NER_COLUMNS = ["tokens", "tags", "slice", "batch_id"]


def to_buffer_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Sentences in the replay buffer's columns: text = JSON of tokens and tags,
    label = the sentence's entity types ("LOC+PER", or "O" for none)."""
    text = [json.dumps({"tokens": list(t), "tags": list(g)}) for t, g in zip(frame["tokens"], frame["tags"])]
    label = ["+".join(types_of(g)) or "O" for g in frame["tags"]]
    return pd.DataFrame({"text": text, "label": label, "slice": frame["slice"].astype(str).to_numpy(),
                         "batch_id": frame["batch_id"].astype(str).to_numpy()})[COLUMNS]


def from_buffer_rows(rows: pd.DataFrame) -> pd.DataFrame:
    decoded = [json.loads(t) for t in rows["text"]]
    return pd.DataFrame({"tokens": [d["tokens"] for d in decoded], "tags": [d["tags"] for d in decoded],
                         "slice": rows["slice"].to_numpy(), "batch_id": rows["batch_id"].to_numpy()})


def encode_sentences(clf: Classifier, frame: pd.DataFrame, max_length: int) -> tuple[list, list]:
    """(input ids, aligned sub-word labels) per sentence."""
    label2id = clf.model.config.label2id
    ids, word_ids = encode_words(clf, [list(t) for t in frame["tokens"]], max_length)
    labels = [align_labels(w, [label2id[t] for t in tags]) for w, tags in zip(word_ids, frame["tags"])]
    return ids, labels


def _inputs(clf: Classifier, ids: list, labels: list, idx, device) -> tuple[dict, torch.Tensor]:
    padded = clf.tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
    width = padded["input_ids"].shape[1]  # right padding: labels pad with IGNORE after the tokens
    target = torch.tensor([labels[i] + [IGNORE] * (width - len(labels[i])) for i in idx])
    return {k: v.to(device) for k, v in padded.items()}, target.to(device)


def _loss(clf: Classifier, inputs: dict, target: torch.Tensor) -> torch.Tensor:
    logits = clf.model(**inputs).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE)


@torch.inference_mode()
def _dev_loss(clf: Classifier, dev: tuple, device, autocast) -> float:
    ids, labels = dev
    clf.model.eval()
    total, count = 0.0, 0
    for start in range(0, len(ids), 64):
        idx = range(start, min(start + 64, len(ids)))
        inputs, target = _inputs(clf, ids, labels, idx, device)
        with autocast:
            logits = clf.model(**inputs).logits
        total += float(F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                                       ignore_index=IGNORE, reduction="sum"))
        count += int((target != IGNORE).sum())
    clf.model.train()
    return round(total / max(count, 1), 6)


def finetune_tagger(clf: Classifier, rows: pd.DataFrame, *, cfg: TrainConfig, model_cfg: ModelConfig,
                    dev: pd.DataFrame | None = None, replay_rows: int = 0) -> TrainReport:
    """Train `clf` in place on `rows` (new sentences first, then `replay_rows` replayed)."""
    torch.manual_seed(cfg.seed)
    device, amp_dtype = pick_device(cfg)
    model = clf.model.to(device).train()
    ids, labels = encode_sentences(clf, rows, model_cfg.max_length)
    dev_enc = encode_sentences(clf, dev, model_cfg.max_length) if dev is not None and len(dev) else None
    lengths, total = np.array([len(x) for x in ids]), planned_steps(len(ids), cfg)
    opt = _optimizer(model, cfg)
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    new_rows = len(rows) - replay_rows
    step, epoch, losses, dev_losses, best, best_state, bad, stopped = 0, 0, [], [], None, None, 0, False
    samples = [0, 0]
    started = time.perf_counter()
    while epoch < cfg.epochs and step < total and not stopped:
        for idx in epoch_batches(lengths, cfg, epoch):
            if step >= total:
                break
            inputs, target = _inputs(clf, ids, labels, idx, device)
            with autocast:
                loss = _loss(clf, inputs, target)
            _optimize(loss, model, opt, sched, cfg)
            step += 1
            losses.append(round(float(loss.detach()), 5))
            replayed = int((idx >= new_rows).sum())
            samples = [samples[0] + len(idx) - replayed, samples[1] + replayed]
        epoch += 1
        if dev_enc is not None:
            dev_losses.append(_dev_loss(clf, dev_enc, device, autocast))
            if best is None or dev_losses[-1] < best:
                best, bad = dev_losses[-1], 0
                if cfg.early_stopping_patience:
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            else:
                bad += 1
            stopped = bool(cfg.early_stopping_patience) and bad >= cfg.early_stopping_patience
    if best_state is not None:
        model.load_state_dict(best_state)
    seconds = time.perf_counter() - started
    peak, kind = _peak_memory(device)
    model.eval().to("cpu")
    return TrainReport(
        device=device.type, precision=str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
        steps=step, epochs=epoch, samples=sum(samples), new_samples=samples[0], replay_samples=samples[1],
        new_rows=new_rows, replay_rows=replay_rows, seconds=round(seconds, 2),
        samples_per_s=round(sum(samples) / max(seconds, 1e-9), 1), peak_memory_mb=peak, peak_memory_kind=kind,
        final_loss=losses[-1] if losses else None, dev_loss=best if best_state is not None else
        (dev_losses[-1] if dev_losses else None), stopped_early=stopped, resumed_from_step=0, losses=losses,
        dev_losses=dev_losses)


def _starting_point(champion_dir, types: list[str], params: Params):
    """(tagger, champion's buffer or None, entity types new to it)."""
    if champion_dir is None:
        return load_base_tagger(params.model.base, labels_for(types), params.train.seed), None, types
    clf, new = grow_types(load_tagger(champion_dir), types, params.train.seed)
    return clf, ReplayBuffer.load(champion_dir), new


def train_tagger(*, champion_dir, train_rows: pd.DataFrame, out_dir, params: Params,
                 dev_rows: pd.DataFrame | None = None) -> Candidate:
    """champion (or base) + new sentences + replayed sentences -> candidate directory
    (model, tokenizer, label map, replay buffer, train_report.json)."""
    out_dir, cfg = Path(out_dir), params.train
    train_rows, dev = dev_split(train_rows[NER_COLUMNS], None if dev_rows is None else dev_rows[NER_COLUMNS],
                                share=cfg.dev_share, patience=cfg.early_stopping_patience, seed=cfg.seed)
    types = types_of(t for tags in train_rows["tags"] for t in tags)
    clf, parent_buffer, new_types = _starting_point(champion_dir, types, params)
    buffer = derive_buffer(parent_buffer, params.replay.strategy, capacity=params.replay.capacity, seed=cfg.seed)
    replay = from_buffer_rows(buffer.sample(int(round(params.replay.ratio * len(train_rows)))))
    rows = pd.concat([train_rows, replay], ignore_index=True)
    report = finetune_tagger(clf, rows, cfg=cfg, model_cfg=params.model, dev=dev, replay_rows=len(replay))
    buffer.add(to_buffer_rows(train_rows))
    _write_atomically(out_dir, clf, buffer, report.to_dict() | {"new_labels": new_types})
    return Candidate(str(out_dir), clf.labels, new_types, report)
