"""Fuse per-scale teacher/student disagreement into one smoothed anomaly map and an image score."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers import GaussianFilter
from torch import nn

__all__ = ["AnomalyMapGenerator", "cosine_distance"]


def cosine_distance(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` over channels: ``(N, C, h, w)`` x2 -> ``(N, 1, h, w)`` in ``[0, 2]``."""
    return 1.0 - F.cosine_similarity(teacher, student, dim=1).unsqueeze(1)


class AnomalyMapGenerator(nn.Module):
    """Per-scale ``1 - cos`` maps, upsampled to the input size, fused, then Gaussian-smoothed.

    Args:
        fusion: ``"sum"`` (mean over scales) or ``"product"`` of the per-scale maps.
        sigma: Gaussian smoothing sigma in pixels of the output map (0 disables smoothing).
        score: ``"max"`` of the map, or ``"topk"`` for the mean of its ``topk_ratio`` largest pixels.
        topk_ratio: fraction of pixels averaged by the ``"topk"`` score.
    """

    def __init__(self, fusion: str = "sum", sigma: float = 4.0, score: str = "max", topk_ratio: float = 0.01) -> None:
        super().__init__()
        if fusion not in ("sum", "product"):
            raise ValueError(f"fusion must be 'sum' or 'product', got {fusion!r}")
        if score not in ("max", "topk"):
            raise ValueError(f"score must be 'max' or 'topk', got {score!r}")
        if not 0.0 < topk_ratio <= 1.0:
            raise ValueError(f"topk_ratio must be in (0, 1], got {topk_ratio}")
        self.fusion = fusion
        self.score = score
        self.topk_ratio = topk_ratio
        self.smooth = GaussianFilter(spatial_dims=2, sigma=sigma) if sigma > 0 else nn.Identity()

    def forward(
        self, teacher: list[torch.Tensor], student: list[torch.Tensor], size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            teacher: per-scale teacher features ``(N, C_i, h_i, w_i)``.
            student: the student's features of the same shapes.
            size: output ``(H, W)``.

        Returns:
            anomaly map ``(N, 1, H, W)`` and image score ``(N,)``.
        """
        maps = [
            F.interpolate(cosine_distance(t, s), size=size, mode="bilinear", align_corners=False)
            for t, s in zip(teacher, student)
        ]
        fused = torch.stack(maps).prod(0) if self.fusion == "product" else torch.stack(maps).mean(0)
        anomaly_map = self.smooth(fused)
        flat = anomaly_map.flatten(1)
        if self.score == "max":
            return anomaly_map, flat.amax(1)
        k = max(1, int(flat.shape[1] * self.topk_ratio))
        return anomaly_map, flat.topk(k, dim=1).values.mean(1)
