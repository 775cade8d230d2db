"""Build the train / calibration / test datasets of a dataset folder, whatever its layout."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from monai.data import Dataset
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    Orientationd,
    Resized,
    ScaleIntensityRangePercentilesd,
    apply_transform,
)

from multiad_monai.data.layouts import index_dataset
from multiad_monai.transforms import EnsureMaskd, EnsureRGBd, VolumeToSlicesd

__all__ = ["AnomalyData", "NamedErrorDataset", "apply_named", "load_datasets"]

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


def _percentile_scaling(lower: float, upper: float) -> ScaleIntensityRangePercentilesd:
    return ScaleIntensityRangePercentilesd("image", lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=True)


def _slice_samples(items: list[dict], transform: Compose, training: bool) -> list[dict]:
    """Load each volume once, slice it, keep lesion-free slices for training."""
    samples = []
    for item in items:
        slices = apply_named(transform, item)
        samples.extend(s for s in slices if not (training and s["label"]))
    return samples


def apply_named(transform: Compose, item: dict):
    """Apply ``transform`` to a sample dict; on failure raise a ``ValueError`` naming its files and the root cause."""
    try:
        return apply_transform(transform, item)
    except Exception as e:
        # the innermost error names the problem; say which sample it came from
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        files = ", ".join(str(item[k]) for k in ("image", "mask") if k in item)
        raise ValueError(f"cannot load {files}: {cause}") from e


def load_datasets(
    dataset_dir: str,
    image_size: int | Sequence[int] = 256,
    calibration_fraction: float = 0.1,
    seed: int = 0,
    percentiles: Sequence[float] = (0.0, 99.5),
    slice_axis: int = 2,
    slice_range: Sequence[int] | None = None,
    min_foreground: float = 0.05,
) -> AnomalyData:
    """Index ``dataset_dir`` and load every sample once (errors name the file before any training).

    Args:
        dataset_dir: a folder in the ``volumes``, ``bmad`` or ``mvtec`` layout (see ``multiad_monai.data.layouts``).
        image_size: side (or ``(H, W)``) of the network input.
        calibration_fraction: share of the normal training samples (volumes, for 3D data) held out to
            calibrate scores after training.
        seed: seed of the calibration split.
        percentiles: per-image (per-volume for 3D) intensity percentiles mapped to 0 and 1.
        slice_axis, slice_range, min_foreground: 3D only, see :class:`multiad_monai.transforms.VolumeToSlicesd`.
    """
    if not 0.0 < calibration_fraction < 1.0:
        raise ValueError(f"calibration_fraction must be in (0, 1), got {calibration_fraction}")
    layout, splits = index_dataset(dataset_dir)
    size = tuple(np.broadcast_to(np.asarray(image_size), (2,)).tolist())
    resize = Resized(["image", "mask"], spatial_size=size, mode=("bilinear", "nearest"), anti_aliasing=(True, False))
    scale = _percentile_scaling(*percentiles)

    rng = np.random.default_rng(seed)
    train_items = list(splits["train"])
    # calibration needs at least two samples to estimate a spread
    held_out = set(rng.permutation(len(train_items))[: max(2, round(calibration_fraction * len(train_items)))].tolist())
    if len(held_out) >= len(train_items):
        raise ValueError(
            f"{dataset_dir} has too few training samples ({len(train_items)}) to hold out calibration data"
        )
    calibration_items = [item for i, item in enumerate(train_items) if i in held_out]
    fit_items = [item for i, item in enumerate(train_items) if i not in held_out]

    if layout == "volumes":
        load = Compose(
            [
                LoadImaged(["image", "mask"], image_only=True, allow_missing_keys=True),
                EnsureChannelFirstd(["image", "mask"], allow_missing_keys=True),
                Orientationd(["image", "mask"], axcodes="RAS", allow_missing_keys=True),
                scale,
                VolumeToSlicesd(
                    ["image", "mask"], axis=slice_axis, slice_range=slice_range, min_foreground=min_foreground
                ),
            ]
        )
        per_slice = Compose([EnsureMaskd(), resize])

        def samples(items: list[dict], training: bool) -> list[dict]:
            return [apply_named(per_slice, s) for s in _slice_samples(items, load, training)]
    else:
        load = Compose(
            [
                LoadImaged(
                    ["image", "mask"],
                    reader="PILReader",
                    reverse_indexing=False,
                    image_only=True,
                    allow_missing_keys=True,
                ),
                EnsureChannelFirstd(["image", "mask"], allow_missing_keys=True),
                scale,
                EnsureMaskd(),
                resize,
            ]
        )

        def samples(items: list[dict], training: bool) -> list[dict]:
            return [apply_named(load, item) for item in items]

    to_rgb = EnsureRGBd("image")
    loaded = {"train": samples(fit_items, True), "calibration": samples(calibration_items, True)}
    for split in ("test", "valid"):
        if split in splits:
            loaded[split] = samples(splits[split], False)
    for split in ("train", "calibration"):
        if not loaded[split]:
            raise ValueError(f"no normal {split} samples left in {dataset_dir} after slicing/holding out")
    has_masks = any("mask" in item for item in splits["test"]) or layout == "volumes"
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
