"""Build the train / calibration / test datasets of a dataset folder, whatever its layout."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.data import CacheDataset, Dataset
from monai.transforms import Compose, apply_transform

from multiad_monai.data.layouts import DatasetIndex, category_root, index_dataset
from multiad_monai.recipe import Recipe
from multiad_monai.transforms.array import source_name
from multiad_monai.transforms.dictionary import TeacherFeaturesd
from multiad_monai.transforms.preprocessing import (
    image_transform,
    network_input,
    slice_transform,
    slicing_transform,
    volume_transform,
)
from multiad_monai.utils import MultiADKeys
from multiad_monai.utils.errors import error_reason

__all__ = [
    "AnomalyData",
    "calibration_split",
    "no_samples_left",
    "NamedErrorDataset",
    "apply_named",
    "cached_teacher_features",
    "load_datasets",
    "with_teacher_features",
]

logger = logging.getLogger(__name__)


@dataclass
class AnomalyData:
    """The datasets of one run. Samples are dicts ``{image (3, S, S) in [0, 1], mask (1, S, S), label}``."""

    layout: str
    train: Dataset
    calibration: Dataset
    test: Dataset
    valid: Dataset | None = None
    has_masks: bool = False
    counts: dict[str, int] = field(default_factory=dict)


class NamedErrorDataset(Dataset):
    """``monai.data.Dataset`` whose loading errors name the sample's files (see :func:`apply_named`)."""

    def _transform(self, index: int):
        return apply_named(self.transform, self.data[index])


def _slice_samples(items: list[dict], transform: Compose, training: bool) -> list[dict]:
    """Load each volume once, slice it, keep lesion-free slices for training."""
    samples = []
    for item in items:
        slices = apply_named(transform, item)
        samples.extend(s for s in slices if not (training and s["label"]))
    return samples


def _name(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], str):  # the files of a DICOM series
        return f"the series of {len(value)} files in {os.path.dirname(value[0])}"
    return source_name(value)


def apply_named(transform: Compose, item: dict):
    """Apply ``transform`` to a sample dict; on failure raise a ``ValueError`` naming its files and the root cause."""
    try:
        return apply_transform(transform, item)
    except Exception as e:
        # the innermost error names the problem; say which sample it came from
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        # an already loaded array is named by its source file, never printed whole
        named = [item[k] for k in ("image", "mask") if k in item]
        files = ", ".join(_name(v) for v in named)
        raise ValueError(f"cannot load {files}: {error_reason(cause)}") from e


def calibration_split(count: int, calibration_fraction: float, seed: int, where: str, volumes: bool) -> set[int]:
    """The indices of the ``count`` normal training samples held out to calibrate the scores.

    The rule of :func:`load_datasets`, also checked by the MONAI Label app before a retrain starts: calibration
    needs at least two samples to estimate a spread, training at least one more.

    Args:
        count: normal training samples (volumes, for 3D data).
        calibration_fraction: as in :func:`load_datasets`.
        seed: as in :func:`load_datasets`.
        where: the dataset, for the message.
        volumes: the samples are volumes (else 2D images), for the message.

    Raises:
        ValueError: nothing would be left to train, naming ``where`` and the fix.
    """
    if not 0.0 < calibration_fraction < 1.0:
        raise ValueError(f"calibration_fraction must be in (0, 1), got {calibration_fraction}")
    rng = np.random.default_rng(seed)
    held_out = set(rng.permutation(count)[: max(2, round(calibration_fraction * count))].tolist())
    if len(held_out) >= count:
        unit = "volumes" if volumes else "images"
        raise ValueError(
            f"{where} has {count} normal training {unit}; at least {len(held_out) + 1} are needed ({len(held_out)} "
            f"held out to calibrate the scores with calibration_fraction={calibration_fraction}, at least 2, the rest "
            "to train), and many more to train well: add normal studies or lower calibration_fraction"
        )
    return held_out


def no_samples_left(split: str, where: str) -> str:
    """The message of a split left empty by slicing (``slice_range``, ``min_foreground``) and holding out."""
    return (
        f"no normal {split} samples left in {where} after slicing/holding out: widen slice_range or lower "
        "min_foreground (see VolumeToSlicesd), or add normal studies"
    )


def load_datasets(
    dataset_dir: str | DatasetIndex,
    recipe: Recipe,
    calibration_fraction: float = 0.1,
    seed: int = 0,
    slice_range: Sequence[int] | None = None,
    min_foreground: float = 0.05,
    category: str | None = None,
    invert_masks: bool = False,
) -> AnomalyData:
    """Index ``dataset_dir`` and load every sample once (errors name the file before any training).

    Args:
        dataset_dir: a folder in the ``volumes``, ``bmad`` or ``mvtec`` layout (see ``multiad_monai.data.layouts``),
            or its :class:`~multiad_monai.data.layouts.DatasetIndex` (then ``category`` is the index's).
        recipe: the model's preprocessing (size, intensity, resize mode, slicing, organ masking), see
            :mod:`multiad_monai.transforms.preprocessing`.
        calibration_fraction: share of the normal training samples (volumes, for 3D data) held out to
            calibrate scores after training.
        seed: seed of the calibration split.
        slice_range: 3D only, which slices to keep (see ``VolumeToSlicesd``).
        min_foreground: 3D only, as there.
        category: a sub-folder of ``dataset_dir`` (an MVTec AD category).
        invert_masks: 2D masks mark defects with 0 on a non-zero background (e.g. PIPED).
    """
    if not 0.0 < calibration_fraction < 1.0:
        raise ValueError(f"calibration_fraction must be in (0, 1), got {calibration_fraction}")
    if isinstance(dataset_dir, DatasetIndex):
        if category not in (None, "", dataset_dir.category):
            raise ValueError(f"category={category!r} given with an index of {dataset_dir.root}: give one of the two")
        dataset_dir, layout, splits = dataset_dir.root, dataset_dir.layout, copy.deepcopy(dataset_dir.splits)
    else:
        dataset_dir = category_root(dataset_dir, category)
        layout, splits = index_dataset(dataset_dir)

    train_items = list(splits["train"])
    held_out = calibration_split(len(train_items), calibration_fraction, seed, dataset_dir, layout == "volumes")
    if len(train_items) - len(held_out) < 10 and layout != "volumes":
        logger.warning(
            f"only {len(train_items) - len(held_out)} of the {len(train_items)} normal images of {dataset_dir} are "
            f"left to train after holding out {len(held_out)} for calibration (calibration_fraction="
            f"{calibration_fraction}): expect a weak model"
        )
    calibration_items = [item for i, item in enumerate(train_items) if i in held_out]
    fit_items = [item for i, item in enumerate(train_items) if i not in held_out]

    if layout == "volumes":
        load = Compose([volume_transform(recipe), slicing_transform(recipe, slice_range, min_foreground)])
        per_slice = slice_transform(recipe)

        def samples(items: list[dict], training: bool) -> list[dict]:
            return [apply_named(per_slice, s) for s in _slice_samples(items, load, training)]
    else:
        load = image_transform(recipe, invert_masks=invert_masks)

        def samples(items: list[dict], training: bool) -> list[dict]:
            return [apply_named(load, item) for item in items]

    to_rgb = network_input()
    loaded = {"train": samples(fit_items, True), "calibration": samples(calibration_items, True)}
    for split in ("test", "valid"):
        if split in splits:
            loaded[split] = samples(splits[split], False)
    for split in ("train", "calibration"):
        if not loaded[split]:
            raise ValueError(no_samples_left(split, dataset_dir))
    has_masks = any("mask" in item for item in splits["test"]) or layout == "volumes"
    if not any(s["label"] for s in loaded["test"]):
        logger.warning(f"the test split of {dataset_dir} holds only normal images: AUROC, AUPRO and F1 are undefined")
    anomalous = [float(s["mask"].mean()) for s in loaded["test"] if s["label"] and "mask" in s]
    if has_masks and anomalous and float(np.mean(anomalous)) > 0.5:
        logger.warning(
            f"ground-truth masks in {dataset_dir} cover {np.mean(anomalous):.0%} of their images on average: they "
            f"look inverted (defects drawn in black); set invert_masks={not invert_masks} if so"
        )
    counts = {split: len(s) for split, s in loaded.items()}
    logger.info(f"{dataset_dir} ({layout} layout): {counts}")
    return AnomalyData(
        layout=layout,
        train=Dataset(loaded["train"], transform=to_rgb),
        calibration=Dataset(loaded["calibration"], transform=to_rgb),
        test=Dataset(loaded["test"], transform=to_rgb),
        valid=Dataset(loaded["valid"], transform=to_rgb) if "valid" in loaded else None,
        has_masks=has_masks,
        counts=counts,
    )


def with_teacher_features(dataset: Dataset, teacher: torch.nn.Module) -> CacheDataset:
    """``dataset`` (e.g. ``AnomalyData.train``) with each sample's teacher features computed once, up front.

    The teacher is frozen, so without augmentation its features of a training image never change: caching them
    saves its forward pass in every training iteration (see :class:`~multiad_monai.transforms.TeacherFeaturesd`).
    """
    # flat: CacheDataset stops caching at a nested Compose (Compose counts as randomizable)
    loading = dataset.transform.flatten().transforms if isinstance(dataset.transform, Compose) else [dataset.transform]
    transform = Compose([*loading, TeacherFeaturesd("image", teacher)])
    return CacheDataset(dataset.data, transform=transform, num_workers=0, progress=False)


def cached_teacher_features(batch, device: torch.device | str, non_blocking: bool = False) -> list[torch.Tensor] | None:
    """A batch's cached teacher features (see :func:`with_teacher_features`) on ``device``, or None."""
    cached = batch.get(MultiADKeys.TEACHER_FEATURES) if isinstance(batch, dict) else None
    return None if cached is None else [f.to(device, non_blocking=non_blocking) for f in cached]
