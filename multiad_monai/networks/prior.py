"""The teacher prior: how far each teacher feature lies from normal teacher features at its location.

A student-free second opinion (the teacher-only baseline's map), added to the student's map when
``Recipe.prior_weight > 0``; see :class:`TeacherPrior`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from multiad_monai.networks.anomaly_map import cosine_distance, upsample
from multiad_monai.recipe import PRIOR_REFERENCES

__all__ = ["TeacherPrior", "nearest_distance", "NEAREST_RATIO", "MAX_BANK_IMAGES"]

# "auto" takes the nearest neighbour when, on held-out normal images, it is closer than the mean at the feature's
# location by at least this factor (distances summed over scales): normal features then sit in several distinct
# modes per location that the mean blurs. Measured in docs/results.md ("the prior's reference").
NEAREST_RATIO = 0.41
# the nearest-neighbour bank keeps at most this many training images, evenly spaced, to bound the checkpoint and
# the search (on lgg_dev 240 of 466 slices score within 0.001 of all)
MAX_BANK_IMAGES = 256


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


class TeacherPrior(nn.Module):
    """Per-scale ``1 - cos`` between each teacher feature and normal teacher features at the same location.

    The reference is the mean normal feature at the location, or with ``reference="nearest"`` the most similar
    normal training feature there or next to it (:func:`nearest_distance`): a location that shows different
    normal anatomy in different images (brain slices at several levels, chest X-rays) is compared with its
    closest normal example rather than with their blurred average. ``"auto"`` picks the nearest neighbour where it
    is clearly closer than the mean to held-out normal features (:meth:`fit_reference`), and keeps the mean where
    it is not: textures from a few images, whose normal features vary around one mean.

    Filled after training by :meth:`fit` (and :meth:`fit_reference` for ``"auto"``), see
    :func:`multiad_monai.calibration.calibrate`.

    Args:
        feature_shapes: ``(C_i, h_i, w_i)`` of each teacher feature map.
        reference: ``"mean"``, ``"nearest"`` or ``"auto"``.
    """

    def __init__(self, feature_shapes: Sequence[Sequence[int]], reference: str = "mean") -> None:
        super().__init__()
        if reference not in PRIOR_REFERENCES:
            raise ValueError(f"prior_reference must be one of {PRIOR_REFERENCES}, got {reference!r}")
        self.reference = reference
        for i, shape in enumerate(feature_shapes):
            self.register_buffer(f"mean{i}", torch.full((1, *shape), float("nan")))
        if reference != "mean":
            for i, shape in enumerate(feature_shapes):  # as many images as calibration keeps, see _load_from_state_dict
                self.register_buffer(f"bank{i}", torch.empty((0, *shape), dtype=torch.float16))
            # 1 when the nearest neighbour is the reference, 0 for the mean (auto's choice), NaN until fitted
            self.register_buffer("nearest", torch.tensor(float("nan")))

    @property
    def means(self) -> list[torch.Tensor]:
        return [buffer for name, buffer in self.named_buffers() if name.startswith("mean")]

    @property
    def banks(self) -> list[torch.Tensor]:
        return [buffer for name, buffer in self.named_buffers() if name.startswith("bank")]

    @property
    def uses_nearest(self) -> bool:
        return self.reference != "mean" and bool(self.nearest == 1)

    @property
    def is_fitted(self) -> bool:
        """False while the prior waits for :meth:`fit` (and, with ``"auto"``, :meth:`fit_reference`)."""
        means = bool(torch.isfinite(self.mean0).all())
        return means and (self.reference == "mean" or bool(torch.isfinite(self.nearest)))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # the bank holds as many images as calibration kept: take the stored size before copying
        for name in [name for name, _ in self.named_buffers() if name.startswith("bank")]:
            stored = state_dict.get(prefix + name)
            if isinstance(stored, torch.Tensor):
                setattr(self, name, torch.empty_like(stored, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, teacher: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Per-scale distances of ``teacher`` features to their reference, upsampled to ``size``:
        ``(S, N, 1, H, W)``."""
        if not self.is_fitted:
            raise RuntimeError("the teacher prior is not fitted: run calibration on normal images after training")
        if self.uses_nearest:
            return torch.stack([upsample(nearest_distance(t, bank), size) for t, bank in zip(teacher, self.banks)])
        return torch.stack([upsample(cosine_distance(t, m.expand_as(t)), size) for t, m in zip(teacher, self.means)])

    @torch.no_grad()
    def fit(self, teacher_batches: Iterable[list[torch.Tensor]]) -> None:
        """Mean normal teacher feature at each location, from batches of per-scale teacher features, and (unless
        ``reference="mean"``) the bank of unit-length features of up to ``MAX_BANK_IMAGES`` of the images."""
        sums, count, banks = None, 0, []
        keep_bank = self.reference != "mean"
        for features in teacher_batches:
            batch_sums = [f.double().sum(0, keepdim=True) for f in features]
            sums = batch_sums if sums is None else [s + b for s, b in zip(sums, batch_sums)]
            count += len(features[0])
            if keep_bank:
                banks.append([F.normalize(f.float(), dim=1).half() for f in features])
        if not count:
            raise ValueError("the teacher prior needs at least one normal training image")
        for mean, total in zip(self.means, sums):
            mean.copy_(total / count)
        if keep_bank:
            kept = torch.linspace(0, count - 1, min(count, MAX_BANK_IMAGES)).round().long()
            for i, scale in enumerate(zip(*banks)):
                setattr(self, f"bank{i}", torch.cat(scale)[kept].to(self.means[i].device))
            if self.reference == "nearest":
                self.nearest.fill_(1.0)

    @torch.no_grad()
    def fit_reference(self, teacher_batches: Iterable[list[torch.Tensor]]) -> float:
        """``reference="auto"``: after :meth:`fit`, take the nearest neighbour where it fits normal images clearly
        better than the mean.

        On held-out normal images, the mean distance to the nearest bank feature over that to the mean feature at
        the same location (both summed over scales) must be below ``NEAREST_RATIO``. With the mean chosen the bank
        is dropped.

        Returns:
            the distance ratio.
        """
        if not all(len(bank) for bank in self.banks):
            raise ValueError("the prior's bank is empty: fit the prior on the training images first")
        to_nearest = to_mean = 0.0
        for features in teacher_batches:
            for f, mean, bank in zip(features, self.means, self.banks):
                to_nearest += float(nearest_distance(f, bank).mean((1, 2, 3)).sum())
                to_mean += float(cosine_distance(f.float(), mean.expand_as(f)).mean((1, 2, 3)).sum())
        if not to_mean:
            raise ValueError("choosing the prior's reference needs held-out normal images")
        ratio = to_nearest / to_mean
        nearest = ratio < NEAREST_RATIO
        self.nearest.fill_(float(nearest))
        if not nearest:
            for i, bank in enumerate(self.banks):
                setattr(self, f"bank{i}", bank[:0])
        return ratio
