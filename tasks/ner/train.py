"""What the one training loop needs to know about a tagger (`task.type: ner`).

The finetune stage (tasks/train/finetune.py `train_candidate`) and its loop (tasks/train/trainloop.py:
length-bucketed batches, AdamW with warm-up/decay, checkpoints and resume, early stopping
on dev loss, distillation, frozen lower layers, reuse of a finished candidate) are the
same for every task type. A tagger differs only in what is here:

- `TokenLabels`, its head for the loop: a tag per word on the word's first sub-word, -100
  (ignored) on the rest; the loss and the distillation term are per labelled token. A
  sentence from a delivery that did not annotate some of the tagger's entity types (its
  batch has no tag of them: an earlier delivery replayed, or one that labels only a new
  type) says nothing about those types: its `O` means "none of the types annotated", so
  its O words are trained on the probability of O or any unannotated type's B-/I- tag
  (partial-label loss) instead of teaching that a later type's entity is O;
- `TaggerTraining`: starting from the base encoder or the champion with B-/I- rows grown
  for new entity types; sentences sit in the replay buffer as JSON, with their set of
  entity types as the "label", so `class_balanced` balances over entity-type combinations;
  the champion's per-token logits on replayed sentences, for distillation.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from tasks.core.config import Params
from tasks.train.distill import distill_loss
from tasks.train.model import Classifier
from tasks.ner.model import IGNORE, align_labels, encode_words, grow_types, load_base_tagger, load_tagger
from tasks.ner.tags import labels_for, types_of
from tasks.train.replay import COLUMNS, ReplayBuffer
from tasks.train.trainloop import pick_device

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


PARTIAL = -1000  # a target at or below: an O word whose allowed tags are set number PARTIAL - target


def unannotated_types(frame: pd.DataFrame, types: list[str]) -> list[frozenset[str]]:
    """Per sentence, the entity types among `types` its delivery did not annotate: those no
    sentence of its batch (`batch_id`; one batch without the column) in `frame` is tagged
    with. A type too rare to appear in a batch's replayed sentences counts as unannotated
    there: that costs its O words some supervision, never a wrong label."""
    batches = frame["batch_id"].astype(str).to_numpy() if "batch_id" in frame else np.zeros(len(frame), dtype=str)
    seen: dict[str, set[str]] = {}
    for batch, tags in zip(batches, frame["tags"]):
        seen.setdefault(batch, set()).update(types_of(tags))
    missing = {batch: frozenset(t for t in types if t not in found) for batch, found in seen.items()}
    return [missing[b] for b in batches]


class TokenLabels:
    """The loop's view of a tagger: see tasks/train/trainloop.py `SequenceLabels` for the methods."""

    columns = ["tokens", "tags"]

    def __init__(self) -> None:
        self._allowed: list[tuple[int, ...]] = []  # append-only: a code always names the same label ids
        self._codes: dict[tuple[int, ...], int] = {}

    def _partial(self, label_ids: tuple[int, ...]) -> int:
        if label_ids not in self._codes:
            self._codes[label_ids] = len(self._allowed)
            self._allowed.append(label_ids)
        return PARTIAL - self._codes[label_ids]

    def encode(self, clf: Classifier, frame: pd.DataFrame, max_length: int) -> tuple[list, list]:
        """(input ids, aligned sub-word labels) per sentence; O words of a sentence whose
        delivery left some of the tagger's types unannotated get a partial code."""
        label2id = clf.model.config.label2id
        ids, word_ids = encode_words(clf, [list(t) for t in frame["tokens"]], max_length)
        types = types_of(label2id)
        labels = []
        for w, tags, missing in zip(word_ids, frame["tags"], unannotated_types(frame, types)):
            o = label2id["O"] if not missing else self._partial(tuple(sorted(
                [label2id["O"], *(label2id[f"{p}-{t}"] for t in missing for p in "BI")])))
            labels.append(align_labels(w, [o if t == "O" else label2id[t] for t in tags]))
        return ids, labels

    def collate(self, clf: Classifier, ids, labels, idx, device) -> tuple[dict, torch.Tensor]:
        padded = clf.tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
        width = padded["input_ids"].shape[1]  # right padding: labels pad with IGNORE after the tokens
        target = torch.tensor([labels[i] + [IGNORE] * (width - len(labels[i])) for i in idx])
        return {k: v.to(device) for k, v in padded.items()}, target.to(device)

    def loss(self, logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy per labelled word; a partial word's term is -log P(any allowed tag)."""
        logits, target = logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1)
        partial = target <= PARTIAL
        if not bool(partial.any()):
            return F.cross_entropy(logits, target, ignore_index=IGNORE, reduction=reduction)
        table = torch.zeros(len(self._allowed), logits.shape[-1], dtype=torch.bool, device=logits.device)
        for code, label_ids in enumerate(self._allowed):
            table[code, list(label_ids)] = True
        rows, allowed = logits[partial], table[PARTIAL - target[partial]]
        total = F.cross_entropy(logits, target.masked_fill(partial, IGNORE), ignore_index=IGNORE, reduction="sum") \
            + (torch.logsumexp(rows, -1) - torch.logsumexp(rows.masked_fill(~allowed, -torch.inf), -1)).sum()
        return total if reduction == "sum" else total / max(int((target != IGNORE).sum()), 1)

    def units(self, target: torch.Tensor) -> int:
        """What a summed loss is averaged over: labelled tokens."""
        return int((target != IGNORE).sum())

    def teacher(self, logits: list[np.ndarray] | None):
        return None if logits is None else [torch.as_tensor(t, dtype=torch.float32) for t in logits]

    def distill(self, logits, target, taught: np.ndarray, rows: np.ndarray, teacher, temperature: float):
        """Distillation on the labelled tokens of the taught sentences."""
        student, old = [], []
        for pos, row in zip(np.flatnonzero(taught), rows):
            t = teacher[int(row)]
            keep = target[pos, :len(t)] != IGNORE
            student.append(logits[pos, :len(t)][keep])
            old.append(t.to(logits.device)[keep])
        return distill_loss(torch.cat(student), torch.cat(old), temperature)

    def hash_rows(self, h, frame: pd.DataFrame | None) -> None:
        if frame is not None:
            h.update(json.dumps([[list(t), list(g)] for t, g in zip(frame["tokens"], frame["tags"])]).encode())

    def truncated(self, clf: Classifier, frame: pd.DataFrame, max_length: int) -> int:
        """Sentences whose words do not all fit in max_length sub-words (the tail is cut)."""
        _, word_ids = encode_words(clf, [list(t) for t in frame["tokens"]], max_length)
        return sum(len({w for w in ws if w is not None}) < len(t) for ws, t in zip(word_ids, frame["tokens"]))


TOKENS = TokenLabels()


class TaggerTraining:
    """The finetune stage's tagger part: see tasks/train/finetune.py `SentenceTraining`."""

    head = TOKENS
    columns = TOKENS.columns

    def starting_point(self, champion_dir, train_rows: pd.DataFrame, params: Params):
        """(tagger, champion's buffer or None, entity types new to it)."""
        types = types_of(t for tags in train_rows["tags"] for t in tags)
        if champion_dir is None:
            return load_base_tagger(params.model.base, labels_for(types), params.train.seed), None, types
        clf, new = grow_types(load_tagger(champion_dir), types, params.train.seed)
        return clf, ReplayBuffer.load(champion_dir), new

    def to_buffer(self, frame: pd.DataFrame) -> pd.DataFrame:
        return to_buffer_rows(frame)

    def worth_replaying(self, replay: pd.DataFrame, delivered: pd.DataFrame, clf) -> pd.DataFrame:
        """Replay keeps what the delivery does not cover. When it annotates every entity
        type the tagger knows, a replayed sentence whose own delivery left one of them
        unannotated (made before the type existed) adds no type the delivery lacks and
        only its partial labels: it is left out. Otherwise every replayed sentence is used."""
        types = types_of(clf.model.config.label2id)
        if not len(replay) or not set(types) <= set(types_of(t for tags in delivered["tags"] for t in tags)):
            return replay
        whole = np.array([not missing for missing in unannotated_types(replay, types)], dtype=bool)
        return replay[whole].reset_index(drop=True)

    def from_buffer(self, rows: pd.DataFrame) -> pd.DataFrame:
        return from_buffer_rows(rows)

    @torch.inference_mode()
    def teacher(self, champion_dir, replay: pd.DataFrame, params: Params) -> list[np.ndarray] | None:
        """The champion's per-sub-word logits on each replayed sentence, when distillation is on."""
        if champion_dir is None or not params.train.distill_weight or not len(replay):
            return None
        device, _ = pick_device(params.train)
        clf = load_tagger(champion_dir)
        model = clf.model.to(device).eval()
        ids, _ = encode_words(clf, [list(t) for t in replay["tokens"]], params.model.max_length)
        out = []
        for start in range(0, len(ids), 64):
            padded = clf.tokenizer.pad({"input_ids": ids[start:start + 64]}, return_tensors="pt").to(device)
            logits = model(**padded).logits.float().cpu().numpy()
            out += [logits[i, :len(ids[start + i])] for i in range(logits.shape[0])]
        return out


TAGGERS = TaggerTraining()
