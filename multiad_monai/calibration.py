"""Calibration: after training, fit everything of the model that normal images decide, in the one right order.

The student's batch-norm statistics come first (every map depends on them), then the teacher prior (its
reference choice needs its bank), then the per-scale and prior standardisation (on held-out maps that need
both), and last the score thresholds (on the final maps). :func:`calibrate` runs these fits; the ignite
:class:`~multiad_monai.handlers.CalibrationHandler` calls it at the end of training.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import torch
from monai.utils import CommonKeys as Keys
from monai.utils import convert_to_tensor
from torch.optim.swa_utils import update_bn

from multiad_monai.data.datasets import cached_teacher_features
from multiad_monai.networks.multiad import MultiAD
from multiad_monai.utils.finite import DivergenceError, listing, nonfinite_tensors

__all__ = ["Calibration", "calibrate"]


class Calibration(NamedTuple):
    """What :func:`calibrate` chose, for the log and the run."""

    images: int  # held-out normal images the statistics come from
    reference_ratio: float | None  # the prior's nearest / mean distance (``prior_reference="auto"`` only)
    prior_gain: float | None  # the gain on the prior (None without a prior)


@torch.no_grad()
def calibrate(
    network: MultiAD, held_out: Iterable[dict], train: Iterable[dict] | None = None, prior_gain: float | None = None
) -> Calibration:
    """Finalise a trained ``network`` so that its state dict is self-contained.

    1. The student's batch-norm running statistics are recomputed over the training images
       (``torch.optim.swa_utils.update_bn``; a short last batch is left out): the map is computed in eval mode,
       and running averages collected while the weights were still moving describe an older network.
    2. With a teacher prior, its mean (and bank) from the training images; with ``prior_reference="auto"`` the
       reference that fits the held-out images better (:class:`~multiad_monai.networks.TeacherPrior`).
    3. On the held-out images: each student scale's std (``fusion="standardized"``), then with a prior both maps'
       standardisation and, with ``adaptive_prior``, the prior's gain from the student map on as many training
       images (:class:`~multiad_monai.networks.ScoreNormalizer`).
    4. The normal score and pixel statistics of the final maps (the thresholds).

    Args:
        network: the trained model (unwrapped from DDP).
        held_out: batches (dicts with ``image``) of normal images not used for training.
        train: batches of all training images, with their cached teacher features when there are; needed with
            a teacher prior; without it the batch-norm statistics stay as trained.
        prior_gain: with ``adaptive_prior``, the prior's gain instead of the one of the measured generalisation
            gap (the bundles pass the cap when training stopped because the student started to memorise).

    Raises:
        ValueError: a prior without ``train``, or non-finite statistics.
        DivergenceError: when the calibrated model holds non-finite tensors (a diverged student).
    """
    device = next(network.parameters()).device
    prior, normalizer = network.prior, network.normalizer

    def image(batch: dict) -> torch.Tensor:
        return convert_to_tensor(batch[Keys.IMAGE], track_meta=False).to(device)

    def teacher_features(batch: dict) -> list[torch.Tensor]:  # cached with the images when they are
        cached = cached_teacher_features(batch, device)
        return cached if cached is not None else network.teacher(image(batch))

    if train is not None:
        update_bn(_full_batches(image(b) for b in train), network.student)
    network.eval()
    # the held-out images and their teacher features, once: the prior's reference and the maps below use them
    held_out = [(image(b), teacher_features(b)) for b in held_out]
    ratio = None
    if prior is not None:
        if train is None:
            raise ValueError("a model with a teacher prior needs the training images to fit the prior")
        prior.fit(teacher_features(b) for b in train)
        if prior.reference == "auto":
            ratio = prior.fit_reference(teacher for _, teacher in held_out)
    # one pass over the held-out images: the student's per-scale maps (to fit the scales, then fused) and the prior
    scale_maps, prior_maps = [], []
    for x, teacher in held_out:
        scale_maps.append(network.anomaly_map.scale_maps(teacher, network.student(x), x.shape[-2:]))
        if prior is not None:
            prior_maps.append(network.prior_map(teacher, x.shape[-2:]))
    scale_maps = torch.cat(scale_maps, dim=1)
    normalizer.fit_scales(scale_maps)
    student_maps = network.student_map(scale_maps)
    prior_maps = torch.cat(prior_maps) if prior is not None else None
    gain = None
    if prior is not None:
        train_maps = None
        if normalizer.adaptive_prior and prior_gain is None:  # the student map on the first training images
            train_maps, seen = [], 0
            for b in train:
                x = image(b)
                scales = network.anomaly_map.scale_maps(teacher_features(b), network.student(x), x.shape[-2:])
                train_maps.append(network.student_map(scales))
                seen += len(x)
                if seen >= len(student_maps):
                    break
            train_maps = torch.cat(train_maps)
        gain = normalizer.fit_fusion(student_maps, prior_maps, train_maps, gain=prior_gain)
    maps, scores = network.smooth_and_score(student_maps, prior_maps)
    if tuple(maps.shape[-2:]) != network.recipe.image_size:
        raise ValueError(
            f"calibration maps are {tuple(maps.shape[-2:])}, the recipe's image_size is {network.recipe.image_size}"
        )
    normalizer.fit_thresholds(scores.float().cpu(), maps.float().cpu())
    bad = nonfinite_tensors(network.state_dict())
    if bad:  # e.g. batch-norm statistics recomputed from a student whose weights overflow
        raise DivergenceError(
            f"after calibration {listing(bad)} {'is' if len(bad) == 1 else 'are'} not finite: the student "
            "diverged in training; rerun with a lower --learning_rate and --overwrite True. The model was not saved"
        )
    return Calibration(len(scores), ratio, gain)


def _full_batches(images: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    # update_bn averages batches alike: a short last one would count fully
    size = None
    for x in images:
        size = size or len(x)
        if len(x) == size:
            yield x
