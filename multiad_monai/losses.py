"""Losses of the Multi-AD student and discriminator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from multiad_monai.networks.anomaly_map import cosine_distance

__all__ = ["DistillationLoss", "AdversarialLoss"]


class DistillationLoss(nn.Module):
    """Mean ``1 - cos(teacher, student)`` over pixels, averaged over scales.

    With ``hard_ratio`` each scale's loss is half the mean and half the mean of its ``hard_ratio`` largest
    distances in the batch (hard-feature mining): the student keeps learning the rare normal structures it
    still gets wrong after the common ones are matched, instead of being scored on them as anomalies.

    Args:
        weights: optional per-scale weights (default: equal).
        hard_ratio: share of the hardest positions given half the weight (0: plain mean).
    """

    def __init__(self, weights: list[float] | None = None, hard_ratio: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= hard_ratio <= 1.0:
            raise ValueError(f"hard_ratio must be in [0, 1], got {hard_ratio}")
        self.weights = weights
        self.hard_ratio = hard_ratio

    def _scale_loss(self, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        distance = cosine_distance(teacher, student)
        if not self.hard_ratio:
            return distance.mean()
        hardest = distance.flatten().topk(max(1, int(distance.numel() * self.hard_ratio))).values
        return 0.5 * distance.mean() + 0.5 * hardest.mean()

    def forward(self, teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
        if len(teacher) != len(student):
            raise ValueError(f"got {len(teacher)} teacher and {len(student)} student feature maps")
        weights = self.weights or [1.0] * len(teacher)
        losses = [w * self._scale_loss(t, s) for w, t, s in zip(weights, teacher, student)]
        return torch.stack(losses).sum() / sum(weights)


class AdversarialLoss(nn.Module):
    """Binary cross-entropy on discriminator logits against a constant target (teacher ``real_label``, student 0).

    Args:
        real_label: the teacher's target; 0.9 is one-sided label smoothing (Salimans et al. 2016), which keeps
            the discriminator from growing over-confident. Give it to the discriminator's loss only.
    """

    def __init__(self, real_label: float = 1.0) -> None:
        super().__init__()
        if not 0.5 < real_label <= 1.0:
            raise ValueError(f"real_label must be in (0.5, 1], got {real_label}")
        self.real_label = real_label

    def forward(self, logits: torch.Tensor, is_teacher: bool) -> torch.Tensor:
        target = torch.full_like(logits, self.real_label if is_teacher else 0.0)
        return F.binary_cross_entropy_with_logits(logits.float(), target)
