"""Multi-AD (Rahmaniar & Suzuki, Pattern Recognition 2025): teacher-student distillation with an
adversarial discriminator on the deepest features. The module holds no training logic."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from multiad_monai.networks.anomaly_map import AnomalyMapGenerator
from multiad_monai.networks.discriminator import FeatureDiscriminator
from multiad_monai.networks.encoders import build_student, build_teacher, feature_channels
from multiad_monai.recipe import RECIPE_VERSION, Recipe

__all__ = ["MultiAD", "AnomalyOutput", "DistillationFeatures", "normalize_to_threshold"]


def normalize_to_threshold(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, sigmas: float) -> torch.Tensor:
    """Map raw scores or maps to ``[0, 1]``: the normal mean -> 0, the threshold ``mean + sigmas * std`` -> 0.5."""
    return ((x - mean) / (2 * sigmas * std)).clamp(0.0, 1.0)


class DistillationFeatures(NamedTuple):
    """Training output: per-scale features, deepest last."""

    teacher: list[torch.Tensor]
    student: list[torch.Tensor]


class AnomalyOutput(NamedTuple):
    """Eval output: raw anomaly map ``(N, 1, H, W)`` and image score ``(N,)``."""

    anomaly_map: torch.Tensor
    pred_score: torch.Tensor


class MultiAD(nn.Module):
    """Frozen ImageNet teacher, SE student of the same topology, feature discriminator, anomaly-map head.

    The model carries its :class:`~multiad_monai.recipe.Recipe` (preprocessing, topology and head settings)
    as extra state of its state dict, and its normal-score statistics as buffers (filled by :meth:`calibrate`),
    so a saved state dict alone rebuilds the model, its preprocessing and normalised scores in ``[0, 1]``
    where 0.5 is the default threshold (see ``multiad_monai.checkpoint.load_model``).

    Args:
        recipe: the settings; built from ``recipe_fields`` when None (e.g. ``MultiAD(teacher="seresnet50")``).
        teacher_weights: local file with the teacher's ImageNet weights (default: the packaged ones).
        allow_download: let MONAI download missing teacher weights (``seresnet50`` only).
        pretrained_teacher: False only to load a checkpoint (which holds the teacher's weights) right after.
        recipe_fields: :class:`~multiad_monai.recipe.Recipe` fields, when ``recipe`` is None.
    """

    def __init__(
        self,
        recipe: Recipe | None = None,
        teacher_weights: str | None = None,
        allow_download: bool = False,
        pretrained_teacher: bool = True,
        **recipe_fields,
    ) -> None:
        super().__init__()
        if recipe is not None and recipe_fields:
            raise ValueError(f"give either a recipe or recipe fields, not both (got {sorted(recipe_fields)})")
        self.recipe = recipe if recipe is not None else Recipe(**recipe_fields)
        teacher, layers = self.recipe.teacher, self.recipe.layers
        self.teacher = build_teacher(teacher, layers, teacher_weights, allow_download, pretrained=pretrained_teacher)
        self.student = build_student(teacher, layers, se=self.recipe.student_se)
        self.discriminator = FeatureDiscriminator(
            feature_channels(teacher, layers)[-1],
            self.recipe.discriminator_channels,
            spectral_norm=self.recipe.discriminator_spectral_norm,
        )
        r = self.recipe
        prior_shapes = self._feature_shapes() if r.prior_weight > 0 else None
        self.anomaly_map = AnomalyMapGenerator(
            r.fusion,
            r.sigma,
            r.score,
            r.topk_ratio,
            prior_shapes,
            r.prior_weight,
            r.adaptive_prior,
            num_scales=len(feature_channels(teacher, layers)),
            prior_reference=r.prior_reference,
        )
        for name in ("score_mean", "score_std", "pixel_mean", "pixel_std"):
            self.register_buffer(name, torch.tensor(float("nan")))

    @torch.no_grad()
    def _feature_shapes(self) -> list[tuple[int, ...]]:
        self.teacher.eval()
        return [tuple(f.shape[1:]) for f in self.teacher(torch.zeros(1, 3, *self.recipe.image_size))]

    @property
    def teacher_name(self) -> str:
        return self.recipe.teacher

    @property
    def threshold_sigmas(self) -> float:
        return self.recipe.threshold_sigmas

    def get_extra_state(self) -> dict:
        """The recipe, saved in the state dict as plain types (``weights_only`` loadable)."""
        return {"recipe_version": RECIPE_VERSION, "recipe": self.recipe.to_dict()}

    def set_extra_state(self, state: dict) -> None:
        """Loading weights trained with another recipe is an error: preprocessing and head would not match."""
        stored = Recipe.from_dict(state["recipe"], "the checkpoint")
        differences = self.recipe.differences(stored)
        if differences:
            details = "; ".join(f"{key}: network {a!r}, checkpoint {b!r}" for key, (a, b) in differences.items())
            raise ValueError(
                f"the checkpoint was trained with another recipe ({details}); rebuild the network from the "
                "checkpoint with multiad_monai.checkpoint.load_model"
            )

    def train(self, mode: bool = True) -> MultiAD:
        super().train(mode)
        self.teacher.eval()  # frozen: BN statistics stay ImageNet's
        return self

    def forward(
        self, images: torch.Tensor, teacher_features: list[torch.Tensor] | None = None
    ) -> DistillationFeatures | AnomalyOutput:
        """
        Args:
            images: ``(N, 3, H, W)`` in ``[0, 1]``.
            teacher_features: the teacher's features of ``images`` when already known (cached), else computed.

        Returns:
            in training mode the teacher and student features; in eval mode an :class:`AnomalyOutput`.
        """
        if teacher_features is None:
            with torch.no_grad():
                teacher_features = self.teacher(images)
        student_features = self.student(images)
        if self.training:
            return DistillationFeatures(teacher_features, student_features)
        anomaly_map, score = self.anomaly_map(teacher_features, student_features, images.shape[-2:])
        return AnomalyOutput(anomaly_map, score)

    @property
    def is_calibrated(self) -> bool:
        return bool(torch.isfinite(self.score_std))

    @torch.no_grad()
    def calibrate(self, scores: torch.Tensor, maps: torch.Tensor) -> None:
        """Store normal-image statistics.

        Args:
            scores: image scores of normal images not used for training ``(N,)``.
            maps: their anomaly maps ``(N, 1, H, W)``.
        """
        if scores.numel() < 2:
            raise ValueError(f"calibration needs at least 2 normal images, got {scores.numel()}")
        bad_scores, bad_pixels = int((~torch.isfinite(scores)).sum()), int((~torch.isfinite(maps)).sum())
        if bad_scores or bad_pixels:
            raise ValueError(
                f"calibration statistics are not finite ({bad_scores} of {scores.numel()} image scores, {bad_pixels} "
                f"of {maps.numel()} map pixels are NaN or Inf): the student diverged in training (lower the learning "
                "rate) or the held-out images hold NaN or Inf"
            )
        if tuple(maps.shape[-2:]) != self.recipe.image_size:
            raise ValueError(
                f"calibration maps are {tuple(maps.shape[-2:])}, the recipe's image_size is {self.recipe.image_size}"
            )
        self.score_mean.copy_(scores.float().mean())
        self.score_std.copy_(scores.float().std().clamp_min(1e-8))
        self.pixel_mean.copy_(maps.float().mean())
        self.pixel_std.copy_(maps.float().std().clamp_min(1e-8))

    @property
    def image_threshold(self) -> torch.Tensor:
        return self.score_mean + self.threshold_sigmas * self.score_std

    @property
    def pixel_threshold(self) -> torch.Tensor:
        return self.pixel_mean + self.threshold_sigmas * self.pixel_std

    def normalize_score(self, score: torch.Tensor) -> torch.Tensor:
        """Map raw scores to ``[0, 1]``: normal mean -> 0, threshold -> 0.5."""
        return self._normalize(score, self.score_mean, self.score_std)

    def normalize_map(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """Map raw anomaly maps to ``[0, 1]`` with the normal pixel statistics (threshold -> 0.5)."""
        return self._normalize(anomaly_map, self.pixel_mean, self.pixel_std)

    def _normalize(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        if not self.is_calibrated:
            raise RuntimeError("the model is not calibrated: run calibration on normal images after training")
        return normalize_to_threshold(x, mean, std, self.threshold_sigmas)
