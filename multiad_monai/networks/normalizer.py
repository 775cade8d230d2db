"""Post-processing of the anomaly map: its parts in units of their normal variability, and scores in ``[0, 1]``.

All statistics come from normal images held out of training (see :func:`multiad_monai.calibration.calibrate`)
and travel in the checkpoint as buffers of :class:`ScoreNormalizer`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ScoreNormalizer", "normalize_to_threshold", "prior_gain"]


def normalize_to_threshold(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, sigmas: float) -> torch.Tensor:
    """Map raw scores or maps to ``[0, 1]``: the normal mean -> 0, the threshold ``mean + sigmas * std`` -> 0.5."""
    return ((x - mean) / (2 * sigmas * std)).clamp(0.0, 1.0)


def prior_gain(gap: float, noise: float = 0.02, full: float = 0.12, cap: float = 16.0) -> float:
    """How much more the teacher prior counts when the student does not generalise.

    ``gap`` is the student's mean distance on held-out normal images over that on its training images. A student
    that learned the normal appearance has a gap of about 1 and keeps the gain 1: a gap of up to ``noise`` above 1
    is measurement noise. One that memorised a small training set has a larger gap: its map is partly noise on new
    images, and the student-free prior is weighted up, linearly to ``cap`` at a gap of ``1 + full``. The measured
    gaps are in docs/model.md ("adaptive prior"), the gains' effect in docs/results.md.
    """
    return float(1.0 + (cap - 1.0) * min(1.0, max(0.0, (gap - (1.0 + noise)) / (full - noise))))


class ScoreNormalizer(nn.Module):
    """Normal-image statistics of the anomaly map, and what they are used for.

    - With ``standardize_scales`` each scale of the student's map is divided by its std on held-out normal pixels
      before the scales are fused (:meth:`fit_scales`), so that every scale counts in units of its own normal
      variability instead of the scale with the widest range of ``1 - cos`` dominating.
    - With a teacher prior (``prior_weight > 0``) the student and prior maps are standardised by their mean and
      std on held-out normal pixels and added, ``student + prior_weight * gain * prior`` (:meth:`combine`), so
      neither dominates by its scale. With ``adaptive_prior`` the gain grows with the student's generalisation
      gap (:func:`prior_gain`, :meth:`fit_fusion`); otherwise it is 1.
    - The normal mean and std of image scores and map pixels set the default thresholds (normal mean +
      ``threshold_sigmas`` std) and the normalisation of scores and maps to ``[0, 1]`` with the threshold at 0.5
      (:meth:`fit_thresholds`).

    Args:
        num_scales: number of feature scales.
        standardize_scales: divide each student scale by its normal std (``Recipe.fusion="standardized"``).
        prior_weight: weight of the standardised prior map (0: no prior, the student's map alone).
        adaptive_prior: multiply ``prior_weight`` by :func:`prior_gain` of the student's generalisation gap.
        threshold_sigmas: default threshold = normal mean + this many standard deviations.
    """

    def __init__(
        self,
        num_scales: int = 3,
        standardize_scales: bool = False,
        prior_weight: float = 0.0,
        adaptive_prior: bool = False,
        threshold_sigmas: float = 3.0,
    ) -> None:
        super().__init__()
        self.standardize_scales = standardize_scales
        self.prior_weight = prior_weight
        self.adaptive_prior = adaptive_prior
        self.threshold_sigmas = threshold_sigmas
        if standardize_scales:
            self.register_buffer("scale_std", torch.full((num_scales,), float("nan")))
        if prior_weight > 0:
            # mean and scale of the student and of the prior map over held-out normal pixels; the prior's scale
            # is its std divided by the gain, so that checkpoints without a gain read as gain 1
            self.register_buffer("fusion_stats", torch.full((4,), float("nan")))
        for name in ("score_mean", "score_std", "pixel_mean", "pixel_std"):
            self.register_buffer(name, torch.tensor(float("nan")))

    def standardize(self, scale_maps: torch.Tensor) -> torch.Tensor:
        """Each student scale of ``(S, N, 1, H, W)`` over its normal std (unchanged without
        ``standardize_scales``)."""
        if not self.standardize_scales:
            return scale_maps
        if not torch.isfinite(self.scale_std).all():
            raise RuntimeError("the scales are not fitted: run calibration on normal images after training")
        return scale_maps / self.scale_std.view(-1, 1, 1, 1, 1)

    def combine(self, student_map: torch.Tensor, prior_map: torch.Tensor | None) -> torch.Tensor:
        """The student map alone, or both maps standardised and added (weight and gain on the prior)."""
        if prior_map is None:
            return student_map
        if not torch.isfinite(self.fusion_stats).all():
            raise RuntimeError("the teacher prior is not fitted: run calibration on normal images after training")
        s_mean, s_std, p_mean, p_std = self.fusion_stats
        return (student_map - s_mean) / s_std + self.prior_weight * (prior_map - p_mean) / p_std

    @torch.no_grad()
    def fit_scales(self, student_scale_maps: torch.Tensor) -> None:
        """Each scale's std over held-out normal pixels, from the student's per-scale maps ``(S, N, 1, H, W)``
        (nothing to fit without ``standardize_scales``)."""
        if self.standardize_scales:
            self.scale_std.copy_(student_scale_maps.flatten(1).float().std(1).clamp(min=1e-8))

    @torch.no_grad()
    def fit_fusion(
        self,
        student_maps: torch.Tensor,
        prior_maps: torch.Tensor,
        student_train_maps: torch.Tensor | None = None,
        gain: float | None = None,
    ) -> float:
        """Standardisation of both maps, from their values on held-out normal images, and the prior's gain.

        Args:
            student_maps: the fused student map on held-out normal images.
            prior_maps: the fused prior map on the same images.
            student_train_maps: the student map on training images, for the gain of ``adaptive_prior``.
            gain: with ``adaptive_prior``, this gain instead of the one of the measured gap (e.g. the cap, when
                training stopped because the student started to memorise).

        Returns:
            the gain applied to the prior (1 without ``adaptive_prior``).
        """
        if not self.adaptive_prior:
            gain = 1.0
        elif gain is None:
            if student_train_maps is None:
                raise ValueError("adaptive_prior needs the student map on training images")
            gain = prior_gain(float(student_maps.mean() / student_train_maps.mean().clamp(min=1e-12)))
        stats = [student_maps.mean(), student_maps.std(), prior_maps.mean(), prior_maps.std() / gain]
        self.fusion_stats.copy_(torch.stack([s.float() for s in stats]).to(self.fusion_stats))
        self.fusion_stats[1::2].clamp_(min=1e-8)
        return gain

    @torch.no_grad()
    def fit_thresholds(self, scores: torch.Tensor, maps: torch.Tensor) -> None:
        """Normal score and pixel statistics.

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
        self.score_mean.copy_(scores.float().mean())
        self.score_std.copy_(scores.float().std().clamp_min(1e-8))
        self.pixel_mean.copy_(maps.float().mean())
        self.pixel_std.copy_(maps.float().std().clamp_min(1e-8))

    @property
    def is_calibrated(self) -> bool:
        return bool(torch.isfinite(self.score_std))

    @property
    def image_threshold(self) -> torch.Tensor:
        return self.score_mean + self.threshold_sigmas * self.score_std

    @property
    def pixel_threshold(self) -> torch.Tensor:
        return self.pixel_mean + self.threshold_sigmas * self.pixel_std

    def normalize_score(self, score: torch.Tensor) -> torch.Tensor:
        """Raw scores to ``[0, 1]``: normal mean -> 0, threshold -> 0.5."""
        return self._normalize(score, self.score_mean, self.score_std)

    def normalize_map(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """Raw anomaly maps to ``[0, 1]`` with the normal pixel statistics (threshold -> 0.5)."""
        return self._normalize(anomaly_map, self.pixel_mean, self.pixel_std)

    def _normalize(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        if not self.is_calibrated:
            raise RuntimeError("the model is not calibrated: run calibration on normal images after training")
        return normalize_to_threshold(x.to(mean.device), mean, std, self.threshold_sigmas)
