"""Fuse per-scale teacher/student disagreement into one smoothed anomaly map and an image score."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers import GaussianFilter
from torch import nn

from multiad_monai.recipe import PRIOR_REFERENCES

__all__ = ["AnomalyMapGenerator", "cosine_distance", "nearest_distance", "prior_gain"]

# "auto" takes the nearest neighbour when, on held-out normal images, it is closer than the mean at the feature's
# location by at least this factor (distances summed over scales): normal features then sit in several distinct
# modes per location that the mean blurs. lgg_dev brain slices 0.30-0.31, chest X-rays 0.38-0.39 (3 seeds each);
# PIPED's textures, 26 images per category, 0.44-0.75 (36 category-seed runs)
NEAREST_RATIO = 0.41
# the nearest-neighbour bank keeps at most this many training images, evenly spaced (lgg_dev, 466 slices: 240
# score within 0.001 of all), to bound the checkpoint and the search
MAX_BANK_IMAGES = 256


def cosine_distance(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` over channels: ``(N, C, h, w)`` x2 -> ``(N, 1, h, w)`` in ``[0, 2]``."""
    return 1.0 - F.cosine_similarity(teacher, student, dim=1).unsqueeze(1)


def nearest_distance(features: torch.Tensor, bank: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """``1 - cos`` to the most similar bank feature at the same location or up to ``radius`` locations away.

    Args:
        features: ``(N, C, h, w)``.
        bank: unit-length normal features ``(M, C, h, w)``.
        radius: search window half-width in feature locations (tolerates small misalignment between images).

    Returns:
        ``(N, 1, h, w)`` in ``[0, 2]``.
    """
    n, _, h, w = features.shape
    features = F.normalize(features.float(), dim=1)
    # one (N, C) x (C, M) product per location; the small test batch is shifted, not the bank
    bank = bank.flatten(2).permute(2, 1, 0).to(torch.float32, memory_format=torch.contiguous_format)
    padded = F.pad(features, (radius,) * 4, mode="replicate")
    best = None
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            moved = padded[..., dy : dy + h, dx : dx + w].flatten(2).permute(2, 0, 1)  # the feature at p + d
            similarity = torch.bmm(moved, bank).amax(-1).t().reshape(n, 1, h, w)  # ... against the bank at p
            # back to the feature's own location p + d; bank locations off the grid do not exist
            similarity = F.pad(similarity, (radius,) * 4, value=float("-inf"))
            similarity = similarity[..., 2 * radius - dy : 2 * radius - dy + h, 2 * radius - dx : 2 * radius - dx + w]
            best = similarity if best is None else torch.maximum(best, similarity)
    return 1.0 - best


class AnomalyMapGenerator(nn.Module):
    """Per-scale ``1 - cos`` maps, upsampled to the input size, fused, then Gaussian-smoothed.

    With ``prior_shapes`` the map has a second, student-free component, the *teacher prior*: ``1 - cos`` between
    each teacher feature and the mean normal teacher feature at the same location (the teacher-only baseline).
    With ``prior_reference="nearest"`` the reference is instead the most similar normal training feature at that
    location or next to it (:func:`nearest_distance`): a location that shows different normal anatomy in
    different images (brain slices at several levels, chest X-rays) is compared with its closest normal example
    rather than with their blurred average. ``"auto"`` picks ``"nearest"`` where the nearest neighbour is clearly
    closer than the mean to held-out normal features (:meth:`fit_reference`), and keeps the mean where it is not:
    textures from a few images (PIPED, 26 per category), whose normal features vary around one mean.
    The two components are standardised with their statistics on held-out normal images, then added
    (``student + prior_weight * gain * prior``), so neither dominates by its scale. With ``adaptive_prior`` the
    gain grows with the student's *generalisation gap*, its mean distance on held-out normal images over that on
    its training images (see :func:`prior_gain`); otherwise it is 1. Their statistics are filled after
    training by :meth:`fit_prior` and :meth:`fit_fusion` (see ``multiad_monai.handlers.CalibrationHandler``).

    With ``fusion="standardized"`` each scale of the student map is divided by its standard deviation on held-out
    normal pixels before the mean over scales (:meth:`fit_scales`), so that every scale counts in units of its
    own normal variability instead of the scale with the widest range of ``1 - cos`` dominating.

    Args:
        fusion: ``"sum"`` (mean over scales), ``"standardized"`` (mean over scales of the student's scales
            divided by their normal std; the prior's as ``"sum"``) or ``"product"`` of the per-scale maps.
        sigma: Gaussian smoothing sigma in pixels of the output map (0 disables smoothing).
        score: ``"max"`` of the map, or ``"topk"`` for the mean of its ``topk_ratio`` largest pixels.
        topk_ratio: fraction of pixels averaged by the ``"topk"`` score.
        prior_shapes: ``(C_i, h_i, w_i)`` of each teacher feature map, to add the teacher prior (None: no prior).
        prior_weight: weight of the standardised prior against the standardised student map.
        prior_reference: ``"mean"``, ``"nearest"`` or ``"auto"``: what the prior compares a teacher feature with.
        adaptive_prior: multiply ``prior_weight`` by :func:`prior_gain` of the student's generalisation gap.
        num_scales: number of feature scales (for ``fusion="standardized"``).
    """

    def __init__(
        self,
        fusion: str = "sum",
        sigma: float = 4.0,
        score: str = "max",
        topk_ratio: float = 0.01,
        prior_shapes: Sequence[Sequence[int]] | None = None,
        prior_weight: float = 1.0,
        adaptive_prior: bool = False,
        num_scales: int = 3,
        prior_reference: str = "mean",
    ) -> None:
        super().__init__()
        if fusion not in ("sum", "standardized", "product"):
            raise ValueError(f"fusion must be 'sum', 'standardized' or 'product', got {fusion!r}")
        if score not in ("max", "topk"):
            raise ValueError(f"score must be 'max' or 'topk', got {score!r}")
        if prior_reference not in PRIOR_REFERENCES:
            raise ValueError(f"prior_reference must be one of {PRIOR_REFERENCES}, got {prior_reference!r}")
        if not 0.0 < topk_ratio <= 1.0:
            raise ValueError(f"topk_ratio must be in (0, 1], got {topk_ratio}")
        self.fusion = fusion
        self.score = score
        self.topk_ratio = topk_ratio
        self.smooth = GaussianFilter(spatial_dims=2, sigma=sigma) if sigma > 0 else nn.Identity()
        if fusion == "standardized":
            self.register_buffer("scale_std", torch.full((num_scales,), float("nan")))
        self.has_prior = prior_shapes is not None
        self.prior_weight = prior_weight
        self.adaptive_prior = adaptive_prior
        self.prior_reference = prior_reference
        for i, shape in enumerate(prior_shapes or ()):
            self.register_buffer(f"prior_mean{i}", torch.full((1, *shape), float("nan")))
        if self.has_prior and prior_reference != "mean":
            for i, shape in enumerate(prior_shapes):  # as many images as calibration keeps, see _load_from_state_dict
                self.register_buffer(f"prior_bank{i}", torch.empty((0, *shape), dtype=torch.float16))
            # 1 when the nearest neighbour is the reference, 0 for the mean (auto's choice), NaN until fitted
            self.register_buffer("prior_nearest", torch.tensor(float("nan")))
        if self.has_prior:
            # mean and scale of the student and of the prior map over held-out normal pixels; the prior's scale
            # is its std divided by the gain, so that checkpoints without a gain read as gain 1
            self.register_buffer("fusion_stats", torch.full((4,), float("nan")))

    @property
    def prior_means(self) -> list[torch.Tensor]:
        return [buffer for name, buffer in self.named_buffers() if name.startswith("prior_mean")]

    @property
    def prior_banks(self) -> list[torch.Tensor]:
        return [buffer for name, buffer in self.named_buffers() if name.startswith("prior_bank")]

    @property
    def uses_nearest(self) -> bool:
        return self.has_prior and self.prior_reference != "mean" and bool(self.prior_nearest == 1)

    @property
    def is_fitted(self) -> bool:
        """False while a teacher prior waits for :meth:`fit_prior`, :meth:`fit_reference` and :meth:`fit_fusion`,
        or scales for :meth:`fit_scales`."""
        scales = self.fusion != "standardized" or bool(torch.isfinite(self.scale_std).all())
        if not self.has_prior:
            return scales
        reference = self.prior_reference == "mean" or bool(torch.isfinite(self.prior_nearest))
        return scales and reference and bool(torch.isfinite(self.fusion_stats).all())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # the bank holds as many images as calibration kept: take the stored size before copying
        for name in [name for name, _ in self.named_buffers() if name.startswith("prior_bank")]:
            stored = state_dict.get(prefix + name)
            if isinstance(stored, torch.Tensor):
                setattr(self, name, torch.empty_like(stored, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def scale_maps(
        self, teacher: list[torch.Tensor], reference: list[torch.Tensor], size: tuple[int, int]
    ) -> torch.Tensor:
        """Per-scale ``1 - cos`` upsampled to ``size``: ``(S, N, 1, H, W)``."""
        return torch.stack([_upsample(cosine_distance(t, r.expand_as(t)), size) for t, r in zip(teacher, reference)])

    def distance_map(
        self, teacher: list[torch.Tensor], reference: list[torch.Tensor], size: tuple[int, int]
    ) -> torch.Tensor:
        """Per-scale ``1 - cos`` upsampled to ``size`` and fused: ``(N, 1, H, W)``, not smoothed."""
        return self._fuse_scales(self.scale_maps(teacher, reference, size))

    def _fuse_scales(self, scale_maps: torch.Tensor) -> torch.Tensor:
        return scale_maps.prod(0) if self.fusion == "product" else scale_maps.mean(0)

    def fuse_student(self, scale_maps: torch.Tensor) -> torch.Tensor:
        """The student component from its :meth:`scale_maps`: fused as :meth:`distance_map` fuses, each scale over
        its normal std first when standardized."""
        if self.fusion == "standardized":
            if not torch.isfinite(self.scale_std).all():
                raise RuntimeError("the scales are not fitted: run calibration on normal images after training")
            scale_maps = scale_maps / self.scale_std.view(-1, 1, 1, 1, 1)
        return self._fuse_scales(scale_maps)

    def student_map(
        self, teacher: list[torch.Tensor], student: list[torch.Tensor], size: tuple[int, int]
    ) -> torch.Tensor:
        """The student component ``(N, 1, H, W)``, unsmoothed and not standardised."""
        return self.fuse_student(self.scale_maps(teacher, student, size))

    def prior_map(self, teacher: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """The prior component: distance to the mean normal teacher feature at each location, or to the nearest
        normal one (:attr:`uses_nearest`)."""
        if not self.uses_nearest:
            return self.distance_map(teacher, self.prior_means, size)
        return self._fuse_scales(
            torch.stack([_upsample(nearest_distance(t, bank), size) for t, bank in zip(teacher, self.prior_banks)])
        )

    def component_maps(
        self, teacher: list[torch.Tensor], student: list[torch.Tensor], size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The student map and the prior map (None without a prior), unsmoothed and not standardised."""
        prior = self.prior_map(teacher, size) if self.has_prior else None
        return self.student_map(teacher, student, size), prior

    def combine(self, student_map: torch.Tensor, prior_map: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Fuse the components of :meth:`component_maps`, smooth, score: map ``(N, 1, H, W)`` and score ``(N,)``."""
        fused = student_map
        if self.has_prior:
            if not self.is_fitted:
                raise RuntimeError("the teacher prior is not fitted: run calibration on normal images after training")
            s_mean, s_std, p_mean, p_std = self.fusion_stats
            fused = (student_map - s_mean) / s_std + self.prior_weight * (prior_map - p_mean) / p_std
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
        return self.combine(*self.component_maps(teacher, student, size))

    @torch.no_grad()
    def fit_scales(self, student_scale_maps: torch.Tensor) -> None:
        """Each scale's std over held-out normal pixels, from :meth:`scale_maps` of the student ``(S, N, 1, H, W)``
        (nothing to fit unless ``fusion="standardized"``)."""
        if self.fusion == "standardized":
            self.scale_std.copy_(student_scale_maps.flatten(1).float().std(1).clamp(min=1e-8))

    @torch.no_grad()
    def fit_prior(self, teacher_batches: Iterable[list[torch.Tensor]]) -> None:
        """Mean normal teacher feature at each location, from batches of per-scale teacher features, and (unless
        ``prior_reference="mean"``) the bank of unit-length features of up to ``MAX_BANK_IMAGES`` of the images."""
        sums, count, banks = None, 0, []
        keep_bank = self.has_prior and self.prior_reference != "mean"
        for features in teacher_batches:
            batch_sums = [f.double().sum(0, keepdim=True) for f in features]
            sums = batch_sums if sums is None else [s + b for s, b in zip(sums, batch_sums)]
            count += len(features[0])
            if keep_bank:
                banks.append([F.normalize(f.float(), dim=1).half() for f in features])
        if not count:
            raise ValueError("the teacher prior needs at least one normal training image")
        for mean, total in zip(self.prior_means, sums):
            mean.copy_(total / count)
        if keep_bank:
            kept = torch.linspace(0, count - 1, min(count, MAX_BANK_IMAGES)).round().long()
            for i, scale in enumerate(zip(*banks)):
                setattr(self, f"prior_bank{i}", torch.cat(scale)[kept].to(self.prior_means[i].device))
            if self.prior_reference == "nearest":
                self.prior_nearest.fill_(1.0)

    @torch.no_grad()
    def fit_reference(self, teacher_batches: Iterable[list[torch.Tensor]]) -> float:
        """``prior_reference="auto"``: after :meth:`fit_prior`, take the nearest neighbour where it fits normal
        images clearly better than the mean.

        On held-out normal images, the mean distance to the nearest bank feature over that to the mean feature at
        the same location (both summed over scales) must be below ``NEAREST_RATIO``. With the mean chosen the bank
        is dropped.

        Returns:
            the distance ratio.
        """
        if not all(len(bank) for bank in self.prior_banks):
            raise ValueError("the prior's bank is empty: fit_prior on the training images first")
        to_nearest = to_mean = 0.0
        for features in teacher_batches:
            for f, mean, bank in zip(features, self.prior_means, self.prior_banks):
                to_nearest += float(nearest_distance(f, bank).mean((1, 2, 3)).sum())
                to_mean += float(cosine_distance(f.float(), mean.expand_as(f)).mean((1, 2, 3)).sum())
        if not to_mean:
            raise ValueError("choosing the prior's reference needs held-out normal images")
        ratio = to_nearest / to_mean
        nearest = ratio < NEAREST_RATIO
        self.prior_nearest.fill_(float(nearest))
        if not nearest:
            for i, bank in enumerate(self.prior_banks):
                setattr(self, f"prior_bank{i}", bank[:0])
        return ratio

    @torch.no_grad()
    def fit_fusion(
        self, student_maps: torch.Tensor, prior_maps: torch.Tensor, student_train_maps: torch.Tensor | None = None
    ) -> float:
        """Standardisation of both components, from their maps on held-out normal images, and the prior's gain.

        Args:
            student_maps: the student component on held-out normal images.
            prior_maps: the prior component on the same images.
            student_train_maps: the student map on training images, for the gain of ``adaptive_prior``.

        Returns:
            the gain applied to the prior (1 without ``adaptive_prior``).
        """
        gain = 1.0
        if self.adaptive_prior:
            if student_train_maps is None:
                raise ValueError("adaptive_prior needs the student map on training images")
            gain = prior_gain(float(student_maps.mean() / student_train_maps.mean().clamp(min=1e-12)))
        stats = [student_maps.mean(), student_maps.std(), prior_maps.mean(), prior_maps.std() / gain]
        self.fusion_stats.copy_(torch.stack([s.float() for s in stats]).to(self.fusion_stats))
        self.fusion_stats[1::2].clamp_(min=1e-8)
        return gain


def _upsample(scale_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(scale_map, size=size, mode="bilinear", align_corners=False)


def prior_gain(gap: float, noise: float = 0.02, full: float = 0.12, cap: float = 16.0) -> float:
    """How much more the teacher prior counts when the student does not generalise.

    ``gap`` is the student's mean distance on held-out normal images over that on its training images. A student
    that learned the normal appearance has a gap of about 1 (lgg_dev, 466 training slices: 0.997-1.004;
    chest_xray, 540 images: 1.005-1.010) and keeps the gain 1: a gap of up to ``noise`` above 1 is measurement
    noise. One that memorised a small training set has a larger gap (PIPED, 26 images: 1.10-1.46 in 68 of 72
    category-seed runs, BRG02 0.999-1.073 in the others): its map is partly noise on new images, and the
    student-free prior is weighted up, linearly to ``cap`` at a gap of ``1 + full``. On PIPED the AUPRO rose from
    gain 1 to 4 to 16 in all 72 runs; the prior alone was higher still in most, but at 16 the student keeps a say.
    """
    return float(1.0 + (cap - 1.0) * min(1.0, max(0.0, (gap - (1.0 + noise)) / (full - noise))))
