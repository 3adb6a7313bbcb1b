"""Update methods against forgetting in the classifier head, as options of the one loop.

Most of what a pretrained encoder forgets in class-incremental fine-tuning is lost in the
head, not the encoder ("Can BERT refrain from forgetting?", ICLR 2023): new rows' logits
grow and old rows are pushed down on every new example. Each method here is one
params.yaml key of `train`, off by default, and works on any head whose last layer is
`model.classifier` (a sentence classifier's label rows, a tagger's tag rows):

- `freeze_old_head`: the rows (weight and bias) of every label the champion already had
  are put back after each optimizer step, so they end exactly as the champion left them
  (weight decay and momentum never move them). The new rows and the encoder train.
- `mask_absent_old` (ER-ACE, Caccia et al. 2022): on the new rows of a batch the
  cross-entropy only sees old labels that are present among those rows; an old label
  absent from them is not pushed down by them. Replayed rows keep the full softmax, so
  old and new labels are still told apart there. A label present in the batch is never
  masked; new labels never are.
- `rebalance_head_epochs` (classifier re-balancing, BiC / EEIL): after training, the
  head alone is trained for that many epochs on the encoder's fixed features of a
  class-balanced subset of the training rows (each label at most as many rows as the
  replayed rows hold per label). Sentence classifiers only: a tagger's rows are
  sentences, whose tags cannot be balanced by choosing sentences (`O` dominates any
  choice), so params validation refuses it with `task.type: ner`.
- `align_new_head` (WA, Zhao et al. 2020): after training, the new rows (weight and
  bias) are scaled so their mean weight norm equals the old rows': new labels' logits no
  longer dwarf old ones'.

`old_rows` is how many head rows the champion had: a grown head keeps old ids first
(tasks/train/model.py `grow_head`, tasks/ner/model.py `grow_types`), so they are rows
`[:old_rows]`. With no champion (the first delivery) every method is a no-op.
"""

from __future__ import annotations

import numpy as np
import torch

# the head alone on fixed features: a linear model, trained at 10x the fine-tune's head rate
REBALANCE_LR_SCALE = 10.0
MASKED = -1e9  # a masked logit: exp() is 0 in fp32, and no inf that could turn into NaN


def head_layer(model: torch.nn.Module) -> torch.nn.Linear:
    return model.classifier


class OldRows:
    """The champion's head rows, put back after every step (`freeze_old_head`)."""

    def __init__(self, model: torch.nn.Module, old_rows: int):
        head = head_layer(model)
        self.n = old_rows
        self.weight = head.weight.detach()[:old_rows].clone()
        self.bias = head.bias.detach()[:old_rows].clone() if head.bias is not None else None

    @torch.no_grad()
    def restore(self, model: torch.nn.Module) -> None:
        head = head_layer(model)
        head.weight[: self.n] = self.weight.to(head.weight.device)
        if self.bias is not None:
            head.bias[: self.n] = self.bias.to(head.bias.device)


def mask_absent_old(logits: torch.Tensor, target: torch.Tensor, new_row: torch.Tensor, old_rows: int,
                    ignore_index: int = -100) -> torch.Tensor:
    """fp32 logits where, on new rows (`new_row`, one flag per row: dim 0), every old label
    (id < old_rows) that no new row of the batch has as a target is set to MASKED.
    Works for (rows, labels) and (rows, tokens, labels) logits alike."""
    logits = logits.float()
    if old_rows <= 0 or not bool(new_row.any()):
        return logits
    present = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    targets = target[new_row]
    present[targets[(targets != ignore_index) & (targets >= 0)]] = True  # not a tagger's partial codes
    absent_old = ~present
    absent_old[old_rows:] = False
    if not bool(absent_old.any()):
        return logits
    rows = new_row.view(-1, *([1] * (logits.ndim - 1)))
    return logits.masked_fill(rows & absent_old, MASKED)


@torch.no_grad()
def align_new_rows(model: torch.nn.Module, old_rows: int) -> float | None:
    """Scale the new head rows so their mean weight norm is the old rows' (WA). Returns
    the factor applied (None when there is nothing to align)."""
    head = head_layer(model)
    if old_rows <= 0 or old_rows >= head.weight.shape[0]:
        return None
    norms = head.weight.float().norm(dim=1)
    gamma = float(norms[:old_rows].mean() / norms[old_rows:].mean().clamp_min(1e-12))
    head.weight[old_rows:] *= gamma
    if head.bias is not None:
        head.bias[old_rows:] *= gamma
    return round(gamma, 6)


def balanced_indices(labels: np.ndarray, new_rows: int, seed: int) -> np.ndarray:
    """Rows of a class-balanced set for re-balancing the head: every label of the rows gets
    at most k rows, k = the replayed rows per label they hold (the buffer's share of an old
    label), so the new labels' many rows no longer outnumber the old ones'. Seeded."""
    replayed = labels[new_rows:]
    if not len(replayed):
        return np.arange(0)
    k = max(1, int(round(len(replayed) / len(np.unique(replayed)))))
    rng = np.random.default_rng([seed, 3])
    picked = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        picked.append(rng.choice(rows, size=min(k, len(rows)), replace=False))
    return np.sort(np.concatenate(picked))


def rebalance_head(model: torch.nn.Module, features: torch.Tensor, targets: torch.Tensor, *, epochs: int,
                   lr: float, batch_size: int, seed: int, kept: "OldRows | None" = None) -> int:
    """Train only the head on fixed encoder features of a class-balanced set (the
    classifier re-balancing of BiC / EEIL): the recency bias a fine-tune leaves in the head
    (new labels' logits too large, or too small under masking) is corrected on data where
    every label counts alike. Returns the steps taken."""
    head = head_layer(model)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    steps = 0
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(targets), generator=generator)
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                loss = torch.nn.functional.cross_entropy(head(features[idx]).float(), targets[idx])
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if kept:
                    kept.restore(model)
                steps += 1
    return steps
