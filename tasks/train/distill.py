"""Distillation from the champion (Learning without Forgetting) on replayed rows.

Replay rehearses old rows with their hard labels; distillation also asks the candidate
to keep the champion's whole output distribution over the old labels on those rows,
which carries more of what the champion knew (how similar intents relate) per row.

`teacher_logits` runs the champion once over the replayed rows before training (its
outputs do not change, so there is no second model in memory while training), and
`distill_loss` is a loss component: it returns a tensor and touches nothing else.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tasks.train.model import Classifier


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL from the teacher's distribution over its (old) labels to the student's, at
    `temperature`, scaled by T^2 so its gradient keeps the size of the cross-entropy's
    (Hinton et al., 2015). The student is normalised over all its labels, new ones
    included, so probability it moves from old labels to new ones on old rows (the bias
    that drives most forgetting in class-incremental learning) is penalised too."""
    old = teacher_logits.shape[-1]
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)[:, :old]
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * temperature ** 2


@torch.inference_mode()
def teacher_logits(teacher: Classifier, texts: list[str], *, max_length: int, batch_size: int = 128,
                   device: torch.device | str = "cpu") -> np.ndarray:
    """The champion's logits (fp32, eval mode) for `texts`, one row per text."""
    model = teacher.model.to(device).eval()
    out = []
    for start in range(0, len(texts), batch_size):
        enc = teacher.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                max_length=max_length, return_tensors="pt").to(device)
        out.append(model(**enc).logits.float().cpu().numpy())
    model.to("cpu")
    width = teacher.model.config.num_labels
    return np.concatenate(out) if out else np.zeros((0, width), dtype=np.float32)
