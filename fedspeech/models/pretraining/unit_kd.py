"""The loss of unit distillation (`model.objective=units`): α·T²·KL + (1−α)·masked prediction.

Soft part: KL(softmax(teacher/T) ‖ softmax(student/T)) per frame, averaged over the valid
frames and scaled by T² so that its gradients keep their size as T changes (Hinton et al.,
2015). Hard part: cross-entropy of the student's logits on the masked frames against the
teacher's own most likely unit, i.e. the teacher's pseudo-labels, so no k-means codebook is
needed at distillation time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class UnitKDTerms:
    """The loss and its parts for one batch (tensors, so the loss can be back-propagated)."""

    loss: torch.Tensor
    kl: torch.Tensor            # mean KL per valid frame at temperature T (not scaled by T²)
    ce: torch.Tensor            # masked-frame cross-entropy against the teacher's units
    correct: int                # masked frames where the student's unit is the teacher's
    masked: int


def unit_kd_terms(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                  valid: torch.Tensor, weight: float, temperature: float) -> UnitKDTerms:
    """Terms from (B, F, K) student and teacher logits, the (B, F) mask and valid frames.

    `weight` is α (of the KL term); a batch without masked frames has a zero hard term.
    """
    t = float(temperature)
    kl = F.kl_div(F.log_softmax(student[valid] / t, dim=-1), F.log_softmax(teacher[valid] / t, dim=-1),
                  reduction="batchmean", log_target=True)
    masked = mask & valid
    units = teacher.argmax(-1)
    if masked.any():
        ce = F.cross_entropy(student[masked], units[masked])
        correct = int((student[masked].argmax(-1) == units[masked]).sum())
    else:
        ce, correct = student.sum() * 0.0, 0
    loss = weight * t * t * kl + (1.0 - weight) * ce
    return UnitKDTerms(loss=loss, kl=kl, ce=ce, correct=correct, masked=int(masked.sum()))
