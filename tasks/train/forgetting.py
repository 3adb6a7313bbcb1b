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
- `align_new_head` (WA, Zhao et al. 2020): after training, the new rows (weight and
  bias) are scaled so their mean weight norm equals the old rows': new labels' logits no
  longer dwarf old ones'.

`old_rows` is how many head rows the champion had: a grown head keeps old ids first
(tasks/train/model.py `grow_head`, tasks/ner/model.py `grow_types`), so they are rows
`[:old_rows]`. With no champion (the first delivery) every method is a no-op.
"""

from __future__ import annotations

import torch

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
    present[targets[targets != ignore_index]] = True
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
