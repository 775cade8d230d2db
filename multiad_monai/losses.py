"""Losses of the Multi-AD student and discriminator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from multiad_monai.networks.anomaly_map import cosine_distance

__all__ = ["DistillationLoss", "AdversarialLoss"]


class DistillationLoss(nn.Module):
    """Mean ``1 - cos(teacher, student)`` over pixels, averaged over scales.

    Args:
        weights: optional per-scale weights (default: equal).
    """

    def __init__(self, weights: list[float] | None = None) -> None:
        super().__init__()
        self.weights = weights

    def forward(self, teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
        if len(teacher) != len(student):
            raise ValueError(f"got {len(teacher)} teacher and {len(student)} student feature maps")
        weights = self.weights or [1.0] * len(teacher)
        losses = [w * cosine_distance(t, s).mean() for w, t, s in zip(weights, teacher, student)]
        return torch.stack(losses).sum() / sum(weights)


class AdversarialLoss(nn.Module):
    """Binary cross-entropy on discriminator logits against a constant target (1 = teacher, 0 = student)."""

    def forward(self, logits: torch.Tensor, is_teacher: bool) -> torch.Tensor:
        target = torch.full_like(logits, 1.0 if is_teacher else 0.0)
        return F.binary_cross_entropy_with_logits(logits.float(), target)
