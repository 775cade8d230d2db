"""The paper's anomaly map: per-scale teacher/student disagreement, upsampled, fused, smoothed, and its score."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers import GaussianFilter
from torch import nn

__all__ = ["AnomalyMapGenerator", "cosine_distance", "upsample"]


def cosine_distance(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` over channels: ``(N, C, h, w)`` x2 -> ``(N, 1, h, w)`` in ``[0, 2]``."""
    return 1.0 - F.cosine_similarity(teacher, student, dim=1).unsqueeze(1)


def upsample(scale_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a ``(N, 1, h, w)`` map to ``size``."""
    return F.interpolate(scale_map, size=size, mode="bilinear", align_corners=False)


class AnomalyMapGenerator(nn.Module):
    """Per-scale ``1 - cos`` maps, upsampled to the input size, fused, then Gaussian-smoothed; the image score is
    the map's maximum (or the mean of its top pixels).

    This is the whole map of the paper. The project's additions act on its parts in
    :class:`~multiad_monai.networks.MultiAD`: each scale divided by its normal std before fusion and the teacher
    prior added after it (:class:`~multiad_monai.networks.ScoreNormalizer`,
    :class:`~multiad_monai.networks.TeacherPrior`).

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

    def scale_maps(
        self, teacher: list[torch.Tensor], reference: list[torch.Tensor], size: tuple[int, int]
    ) -> torch.Tensor:
        """Per-scale ``1 - cos`` upsampled to ``size``: ``(S, N, 1, H, W)``."""
        return torch.stack([upsample(cosine_distance(t, r.expand_as(t)), size) for t, r in zip(teacher, reference)])

    def fuse(self, scale_maps: torch.Tensor) -> torch.Tensor:
        """``(S, N, 1, H, W)`` -> ``(N, 1, H, W)``: the mean or the product over scales."""
        return scale_maps.prod(0) if self.fusion == "product" else scale_maps.mean(0)

    def smooth_and_score(self, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The smoothed map ``(N, 1, H, W)`` and its score ``(N,)``."""
        anomaly_map = self.smooth(fused)
        flat = anomaly_map.flatten(1)
        if self.score == "max":
            return anomaly_map, flat.amax(1)
        k = max(1, int(flat.shape[1] * self.topk_ratio))
        return anomaly_map, flat.topk(k, dim=1).values.mean(1)

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
        return self.smooth_and_score(self.fuse(self.scale_maps(teacher, student, size)))
