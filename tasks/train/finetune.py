"""Fine-tune: the champion (or a base encoder) learns the new batch plus replayed rows.

`train_candidate` is the finetune stage of the path: it loads the champion (growing its
head for new labels, old ids untouched) or a base encoder, derives this version's replay
buffer from the champion's, mixes `replay.ratio` replayed rows per new row, optionally
precomputes the champion's outputs on them for distillation, trains (tasks/train/trainloop.py)
with early stopping on the batch's dev rows (or a seeded share of its train rows), and
writes the candidate: model, the buffer its successor will start from, train_report.json.

The candidate is written to a temporary directory and renamed into place only when
complete; a finished candidate for the same inputs is reused, and an interrupted one
resumes from its last checkpoint (`<out_dir>.run/`). One seed (`train.seed`) decides
head initialisation, the dev carve, replay sampling, data order and dropout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from tasks.core.config import Params, stats_head_on
from tasks.train.distill import teacher_logits
from tasks.train.model import Classifier, grow_head, load_base, load_classifier, open_vectors, save_classifier, unwrap
from tasks.train.replay import COLUMNS, ReplayBuffer, derive_buffer
from tasks.train.parallel import finetune_parallel
from tasks.train.stats_head import ClassStats, StatsHeadModel, sentence_features
from tasks.train.trainloop import SEQUENCE, TrainReport, TrainSet, finetune, fingerprint, pick_device

REPORT_FILE = "train_report.json"


@dataclass(frozen=True)
class Candidate:
    path: str
    labels: list[str]
    new_labels: list[str]
    train: TrainReport


def dev_split(train_rows: pd.DataFrame, dev_rows: pd.DataFrame | None, *, share: float, patience: int,
              seed: int) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(rows to train on, dev rows). The batch's own dev rows when it has them; else, only
    when early stopping is on, a seeded `share` of the train rows (at least 2 rows must
    remain on each side; the carved rows are neither trained on nor buffered)."""
    if dev_rows is not None and len(dev_rows):
        return train_rows, dev_rows
    n_dev = int(round(share * len(train_rows)))
    if not patience or n_dev < 2 or len(train_rows) - n_dev < 2:
        return train_rows, None
    picked = np.zeros(len(train_rows), dtype=bool)
    picked[np.random.default_rng([seed, 1]).choice(len(train_rows), size=n_dev, replace=False)] = True
    return train_rows[~picked].reset_index(drop=True), train_rows[picked].reset_index(drop=True)


class SentenceTraining:
    """What the finetune stage needs to know about a sentence classifier: its row columns,
    how it starts (base encoder, or the champion with its head grown for new labels), how
    rows sit in the replay buffer, the champion's outputs for distillation, and its head
    for the loop (tasks/train/trainloop.py). A tagger has its own (tasks/ner/train.py)."""

    head = SEQUENCE
    columns = SEQUENCE.columns

    def starting_point(self, champion_dir, train_rows: pd.DataFrame, params: Params):
        """(classifier, champion's buffer or None, labels new to it)."""
        seed, batch_labels = params.train.seed, sorted(train_rows["label"].astype(str).unique())
        if champion_dir is None:
            return load_base(params.model.base, batch_labels, seed), None, batch_labels
        clf = unwrap(load_classifier(champion_dir))  # from a statistics head: its encoder, the trained head's rows
        new_labels = [label for label in batch_labels if label not in clf.labels]
        return grow_head(clf, new_labels, seed), ReplayBuffer.load(champion_dir), new_labels

    def to_buffer(self, frame: pd.DataFrame) -> pd.DataFrame:
        return frame[COLUMNS]

    def worth_replaying(self, replay: pd.DataFrame, delivered: pd.DataFrame, clf) -> pd.DataFrame:
        """Every replayed row: a sentence's label is whole (a tagger's may not be)."""
        return replay

    def from_buffer(self, rows: pd.DataFrame) -> pd.DataFrame:
        return rows

    def teacher(self, champion_dir, replay: pd.DataFrame, params: Params) -> np.ndarray | None:
        """The champion's logits on the replayed rows, when distillation is on."""
        if champion_dir is None or not params.train.distill_weight or not len(replay):
            return None
        device, _ = pick_device(params.train)
        return teacher_logits(load_classifier(champion_dir), list(replay["text"]),
                              max_length=params.model.max_length, device=device)


SENTENCES = SentenceTraining()


def _finished(out_dir: Path, key: str) -> Candidate | None:
    """A complete candidate already in place for exactly these inputs."""
    try:
        report = json.loads((out_dir / REPORT_FILE).read_text())
        labels = json.loads((out_dir / "label_map.json").read_text())["labels"]
    except (OSError, ValueError, KeyError):
        return None
    if report.get("inputs_sha256") != key:
        return None
    return Candidate(str(out_dir), labels, report.pop("new_labels", []), TrainReport(**report))


def _write_atomically(out_dir: Path, clf: Classifier, buffer: ReplayBuffer, report: dict) -> None:
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_classifier(clf, tmp)
    buffer.save(tmp)
    (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


def champion_rows(champion_dir) -> int:
    """How many head rows the champion has (0: no champion); a grown head keeps them first."""
    if champion_dir is None:
        return 0
    return len(json.loads((Path(champion_dir) / "config.json").read_text())["id2label"])


def replay_sample(buffer: ReplayBuffer, pool: pd.DataFrame | None, n: int, seed: int) -> pd.DataFrame:
    """n replayed rows: from the buffer, or, when a pool of stored lineage rows is given
    (`replay.pool: lineage`), drawn from it by a generator of its own, so the buffer's
    state (and what the candidate stores) is the same either way."""
    if pool is None:
        return buffer.sample(n)
    n = min(n, len(pool))
    picked = np.random.default_rng([seed, 2]).choice(len(pool), size=n, replace=False) if n else []
    return pool[COLUMNS].iloc[np.sort(picked)].reset_index(drop=True)


def train_candidate(*, champion_dir, train_rows: pd.DataFrame, out_dir, params: Params,
                    dev_rows: pd.DataFrame | None = None,
                    on_step: Callable[[int], None] | None = None,
                    replay_pool: pd.DataFrame | None = None, training=SENTENCES) -> Candidate:
    """The finetune stage: champion (or base) + new rows + replay sample -> candidate dir.

    The candidate directory holds the model and the replay buffer its successor will
    use: the champion's buffer with this batch's train rows offered to it. `replay_pool`:
    the lineage's stored training rows, replayed instead of the buffer's. `training`: the
    task type's model-specific part (`SentenceTraining`, or a tagger's)."""
    out_dir, cfg, cols = Path(out_dir), params.train, training.columns
    if training is SENTENCES and stats_head_on(params):
        return stats_candidate(champion_dir=champion_dir, train_rows=train_rows, out_dir=out_dir, params=params,
                               dev_rows=dev_rows)
    # the head gets every label of the delivery, also one whose only rows went to dev
    delivered = train_rows if dev_rows is None else pd.concat([train_rows, dev_rows], ignore_index=True)
    train_rows, dev = dev_split(train_rows, dev_rows, share=cfg.dev_share, patience=cfg.early_stopping_patience,
                                seed=cfg.seed)
    clf, parent_buffer, new_labels = training.starting_point(champion_dir, delivered, params)
    buffer = derive_buffer(parent_buffer, params.replay.strategy, capacity=params.replay.capacity, seed=cfg.seed)
    pool = training.to_buffer(replay_pool) if replay_pool is not None else None
    replay = training.worth_replaying(training.from_buffer(
        replay_sample(buffer, pool, int(round(params.replay.ratio * len(train_rows))), cfg.seed)), delivered, clf)
    rows = pd.concat([train_rows[cols], replay[cols]], ignore_index=True)
    data = TrainSet(rows, len(replay), None if dev is None else dev[cols],
                    training.teacher(champion_dir, replay, params), warm=champion_dir is not None,
                    old_rows=champion_rows(champion_dir))
    done = _finished(out_dir, fingerprint(clf, data, cfg, params.model, training.head))
    if done:
        return done
    run_dir = out_dir.with_name(out_dir.name + ".run")
    if cfg.processes > 1:  # data-parallel: the same loop in N processes (on_step is in-process only)
        report = finetune_parallel(clf, data, cfg=cfg, model_cfg=params.model, run_dir=run_dir, head=training.head)
    else:
        report = finetune(clf, data, cfg=cfg, model_cfg=params.model, run_dir=run_dir, on_step=on_step,
                          head=training.head)
    report = replace(report, threads=torch.get_num_threads())
    buffer.add(training.to_buffer(train_rows))
    _write_atomically(out_dir, clf, buffer, report.to_dict() | {"new_labels": new_labels})
    shutil.rmtree(run_dir, ignore_errors=True)
    return Candidate(str(out_dir), clf.labels, new_labels, report)


def stats_candidate(*, champion_dir, train_rows: pd.DataFrame, out_dir, params: Params,
                    dev_rows: pd.DataFrame | None = None) -> Candidate:
    """`train.stats_head: alone` (tasks/train/stats_head.py): the champion's class
    statistics plus this batch's train rows; the encoder is not trained. The first
    delivery starts them from the base encoder; a champion that was fine-tuned has no
    statistics, so they start from its replay buffer's rows (said in the report:
    `replay_rows`). The replay buffer is still kept, so fine-tuning can take over later.
    Dev rows are not learned from (nothing to stop early); their labels join the head."""
    out_dir, cfg = Path(out_dir), params.train
    rows = train_rows[COLUMNS].reset_index(drop=True)
    delivered = rows if dev_rows is None else pd.concat([rows, dev_rows[COLUMNS]], ignore_index=True)
    labels = sorted(delivered["label"].astype(str).unique())
    if champion_dir is None:
        clf, parent_buffer = load_base(params.model.base, labels, cfg.seed), None
    else:
        clf, parent_buffer = load_classifier(champion_dir), ReplayBuffer.load(champion_dir)
    vectors = {}  # the same frozen encoder: production's pooled vectors of the exam rows stay true
    if isinstance(clf.model, StatsHeadModel):
        # with those its exam in this run added (the new held-out rows): the candidate's
        # exam then runs the encoder over none of them again
        stats, seed_rows = clf.model.stats, rows.iloc[:0]
        vectors = {**clf.model.vectors, **open_vectors(champion_dir)}
        clf = Classifier(clf.model.inner, clf.tokenizer)
        # the sums are in the lineage's feature space (its first statistics version fixed
        # stats_features and stats_bandwidth); only the shrinkage is the solver's to change
        if stats.features != cfg.stats_features:
            raise ValueError(f"train.stats_features is {cfg.stats_features} but production's class statistics use "
                             f"{stats.features} features: a lineage keeps its feature map (set it back, or start "
                             "from the base model)")
        stats.shrinkage, stats.weights, stats.bias = cfg.stats_shrinkage, None, None
    else:
        stats = ClassStats.empty(clf.model.config.hidden_size, cfg.stats_features, cfg.stats_bandwidth,
                                 cfg.stats_shrinkage, cfg.seed)
        seed_rows = parent_buffer.rows[COLUMNS] if parent_buffer is not None else rows.iloc[:0]
    key = hashlib.sha256(json.dumps([dataclasses.asdict(cfg), dataclasses.asdict(params.model), stats.digest(),
                                     pd.util.hash_pandas_object(rows, index=False).tolist()]).encode()).hexdigest()
    done = _finished(out_dir, key)
    if done:
        return done
    new_labels = [label for label in labels if label not in clf.labels]
    if champion_dir is not None:
        clf = grow_head(clf, new_labels, cfg.seed)  # the transformers config names every label
    stats.ensure(clf.labels)  # the same ids as the config's, so logit i is clf.labels[i]
    device, _ = pick_device(cfg)
    started = time.perf_counter()
    learn = pd.concat([seed_rows, rows], ignore_index=True)
    z = sentence_features(clf.model, clf.tokenizer, learn["text"].astype(str).tolist(), stats,
                          max_length=params.model.max_length, batch_size=params.evaluate.batch_size, device=device)
    stats.add(z, learn["label"].astype(str).tolist())
    stats.solve()
    clf.model.to("cpu")
    seconds = time.perf_counter() - started
    buffer = derive_buffer(parent_buffer, params.replay.strategy, capacity=params.replay.capacity, seed=cfg.seed)
    buffer.add(rows)
    wrapped = Classifier(StatsHeadModel(clf.model, stats, vectors), clf.tokenizer)
    report = TrainReport(device=device.type, precision="fp32", steps=0, epochs=0, samples=0, new_samples=0,
                         replay_samples=0, new_rows=len(rows), replay_rows=len(seed_rows), seconds=round(seconds, 2),
                         samples_per_s=0.0, peak_memory_mb=0.0, peak_memory_kind="none", final_loss=None,
                         dev_loss=None, stopped_early=False, resumed_from_step=0, inputs_sha256=key,
                         threads=torch.get_num_threads(), stats_rows=len(learn),
                         stats_bytes=stats.nbytes)
    _write_atomically(out_dir, wrapped, buffer, report.to_dict() | {"new_labels": new_labels})
    return Candidate(str(out_dir), wrapped.labels, new_labels, report)
