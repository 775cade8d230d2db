"""Multi-AD (Rahmaniar & Suzuki, Pattern Recognition 2025): teacher-student distillation with an
adversarial discriminator on the deepest features. The module holds no training logic."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from multiad_monai.networks.anomaly_map import AnomalyMapGenerator
from multiad_monai.networks.discriminator import FeatureDiscriminator
from multiad_monai.networks.encoders import build_student, build_teacher, feature_channels
from multiad_monai.networks.normalizer import ScoreNormalizer
from multiad_monai.networks.prior import TeacherPrior
from multiad_monai.recipe import RECIPE_VERSION, Recipe

__all__ = ["MultiAD", "AnomalyOutput", "DistillationFeatures", "legacy_keys"]

# state-dict keys of checkpoints written before the head was split into map, prior and normaliser
_LEGACY_PREFIXES = (
    ("anomaly_map.prior_mean", "prior.mean"),
    ("anomaly_map.prior_bank", "prior.bank"),
    ("anomaly_map.prior_nearest", "prior.nearest"),
    ("anomaly_map.scale_std", "normalizer.scale_std"),
    ("anomaly_map.fusion_stats", "normalizer.fusion_stats"),
    ("score_", "normalizer.score_"),
    ("pixel_", "normalizer.pixel_"),
)


def legacy_keys(state: dict) -> dict:
    """``state`` with the keys of checkpoints written before the head split renamed to today's (a new dict; a
    current state dict comes back equal)."""
    renamed = {}
    for key, value in state.items():
        for old, new in _LEGACY_PREFIXES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        renamed[key] = value
    return renamed


class DistillationFeatures(NamedTuple):
    """Training output: per-scale features, deepest last."""

    teacher: list[torch.Tensor]
    student: list[torch.Tensor]


class AnomalyOutput(NamedTuple):
    """Eval output: raw anomaly map ``(N, 1, H, W)`` and image score ``(N,)``."""

    anomaly_map: torch.Tensor
    pred_score: torch.Tensor


class MultiAD(nn.Module):
    """Frozen ImageNet teacher, SE student of the same topology, feature discriminator and the anomaly-map head.

    The head has three parts: the paper's map (:class:`~multiad_monai.networks.AnomalyMapGenerator`), the
    teacher prior (:class:`~multiad_monai.networks.TeacherPrior`, ``None`` when ``Recipe.prior_weight`` is 0)
    and the post-processor holding every normal-image statistic
    (:class:`~multiad_monai.networks.ScoreNormalizer`, filled by :func:`multiad_monai.calibration.calibrate`).

    The model carries its :class:`~multiad_monai.recipe.Recipe` (preprocessing, topology and head settings)
    as extra state of its state dict, so a saved state dict alone rebuilds the model, its preprocessing and
    normalised scores in ``[0, 1]`` where 0.5 is the default threshold (see ``multiad_monai.checkpoint.load_model``).

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
        self.recipe = r = recipe if recipe is not None else Recipe(**recipe_fields)
        pretrained = pretrained_teacher
        self.teacher = build_teacher(r.teacher, r.layers, teacher_weights, allow_download, pretrained=pretrained)
        self.student = build_student(r.teacher, r.layers, se=r.student_se)
        channels = feature_channels(r.teacher, r.layers)
        self.discriminator = FeatureDiscriminator(
            channels[-1], r.discriminator_channels, spectral_norm=r.discriminator_spectral_norm
        )
        if r.fusion not in ("sum", "standardized", "product"):
            raise ValueError(f"fusion must be 'sum', 'standardized' or 'product', got {r.fusion!r}")
        # "standardized" is the paper's mean over scales, each student scale first over its normal std
        self.anomaly_map = AnomalyMapGenerator(
            "product" if r.fusion == "product" else "sum", r.sigma, r.score, r.topk_ratio
        )
        self.prior = TeacherPrior(self._feature_shapes(), r.prior_reference) if r.prior_weight > 0 else None
        self.normalizer = ScoreNormalizer(
            len(channels), r.fusion == "standardized", r.prior_weight, r.adaptive_prior, r.threshold_sigmas
        )
        self._register_load_state_dict_pre_hook(_rename_legacy_keys)

    @torch.no_grad()
    def _feature_shapes(self) -> list[tuple[int, ...]]:
        self.teacher.eval()
        return [tuple(f.shape[1:]) for f in self.teacher(torch.zeros(1, 3, *self.recipe.image_size))]

    @property
    def teacher_name(self) -> str:
        return self.recipe.teacher

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
        return self.score_features(teacher_features, student_features, images.shape[-2:])

    def student_map(self, scale_maps: torch.Tensor) -> torch.Tensor:
        """The student's fused map ``(N, 1, H, W)`` from its per-scale maps (each over its normal std first with
        ``fusion="standardized"``), unsmoothed."""
        return self.anomaly_map.fuse(self.normalizer.standardize(scale_maps))

    def prior_map(self, teacher: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """The teacher prior's fused map ``(N, 1, H, W)``, unsmoothed."""
        return self.anomaly_map.fuse(self.prior(teacher, size))

    def score_features(
        self, teacher: list[torch.Tensor], student: list[torch.Tensor], size: tuple[int, int]
    ) -> AnomalyOutput:
        """The anomaly map ``(N, 1, H, W)`` and image score ``(N,)`` of teacher and student features."""
        student_map = self.student_map(self.anomaly_map.scale_maps(teacher, student, size))
        prior_map = self.prior_map(teacher, size) if self.prior is not None else None
        return self.smooth_and_score(student_map, prior_map)

    def smooth_and_score(self, student_map: torch.Tensor, prior_map: torch.Tensor | None) -> AnomalyOutput:
        """Combine the student and prior maps, smooth, score."""
        return AnomalyOutput(*self.anomaly_map.smooth_and_score(self.normalizer.combine(student_map, prior_map)))

    # the calibrated scores, as the rest of the package reads them
    @property
    def is_calibrated(self) -> bool:
        return self.normalizer.is_calibrated

    @property
    def image_threshold(self) -> torch.Tensor:
        return self.normalizer.image_threshold

    @property
    def pixel_threshold(self) -> torch.Tensor:
        return self.normalizer.pixel_threshold

    def normalize_score(self, score: torch.Tensor) -> torch.Tensor:
        """Map raw scores to ``[0, 1]``: normal mean -> 0, threshold -> 0.5."""
        return self.normalizer.normalize_score(score)

    def normalize_map(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """Map raw anomaly maps to ``[0, 1]`` with the normal pixel statistics (threshold -> 0.5)."""
        return self.normalizer.normalize_map(anomaly_map)


def _rename_legacy_keys(state_dict: dict, prefix: str, *args) -> None:
    # in place: load_state_dict reads the dict it handed to the hook
    for key in [key for key in state_dict if key.startswith(prefix)]:
        (new,) = legacy_keys({key[len(prefix) :]: None})
        if prefix + new != key:
            state_dict[prefix + new] = state_dict.pop(key)
