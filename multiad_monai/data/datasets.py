"""Build the train / calibration / test datasets of a dataset folder, whatever its layout."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.data import Dataset
from monai.transforms import (
    CastToTyped,
    Compose,
    DeleteItemsd,
    EnsureChannelFirstd,
    LoadImaged,
    MaskIntensityd,
    Orientationd,
    Resized,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    apply_transform,
)

from multiad_monai.data.layouts import index_dataset
from multiad_monai.transforms import (
    CheckHounsfieldd,
    EnsureMaskd,
    EnsureRGBd,
    PadToSquared,
    ScaleIntensityByDtyped,
    SplitLabelsd,
    VolumeToSlicesd,
)

__all__ = ["AnomalyData", "NamedErrorDataset", "apply_named", "intensity_transform", "load_datasets"]

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


def intensity_transform(
    mode: str = "percentile", percentiles: Sequence[float] = (0.0, 99.5), hu_window: Sequence[float] = (-200.0, 250.0)
) -> Compose:
    """The image's intensity mapping to ``[0, 1]``, shared by training, evaluation and inference.

    Args:
        mode: ``"percentile"`` (MRI, OCT: per image / volume), ``"dtype"`` (natural 8/16-bit images: by bit
            depth) or ``"hu"`` (CT: a fixed Hounsfield window, with a warning for data not in HU).
        percentiles: lower/upper percentiles for ``"percentile"``.
        hu_window: HU range for ``"hu"`` (BMAD liver: -200 to 250).
    """
    to_float = CastToTyped("image", dtype=torch.float32)
    if mode == "percentile":
        return Compose(
            [to_float, ScaleIntensityRangePercentilesd("image", *percentiles, b_min=0.0, b_max=1.0, clip=True)]
        )
    if mode == "dtype":
        return Compose([ScaleIntensityByDtyped("image")])
    if mode == "hu":
        window = ScaleIntensityRanged("image", *hu_window, b_min=0.0, b_max=1.0, clip=True)
        return Compose([to_float, CheckHounsfieldd("image"), window])
    raise ValueError(f"intensity must be 'percentile', 'dtype' or 'hu', got {mode!r}")


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
    intensity: str = "percentile",
    percentiles: Sequence[float] = (0.0, 99.5),
    hu_window: Sequence[float] = (-200.0, 250.0),
    resize_mode: str = "stretch",
    slice_axis: int = 2,
    slice_range: Sequence[int] | None = None,
    min_foreground: float = 0.05,
    organ_labels: Sequence[int] | None = None,
    lesion_labels: Sequence[int] = (2,),
    category: str | None = None,
    invert_masks: bool = False,
) -> AnomalyData:
    """Index ``dataset_dir`` and load every sample once (errors name the file before any training).

    Args:
        dataset_dir: a folder in the ``volumes``, ``bmad`` or ``mvtec`` layout (see ``multiad_monai.data.layouts``).
        image_size: side (or ``(H, W)``) of the network input.
        calibration_fraction: share of the normal training samples (volumes, for 3D data) held out to
            calibrate scores after training.
        seed: seed of the calibration split.
        intensity, percentiles, hu_window: see :func:`intensity_transform`.
        resize_mode: ``"stretch"`` to the square input, or ``"pad"`` to a square first (keeps the aspect ratio).
        slice_axis, slice_range, min_foreground: 3D only, see :class:`multiad_monai.transforms.VolumeToSlicesd`.
        organ_labels: 3D only; when given, label maps hold organ and lesion labels (e.g. LiTS ``[1]`` and
            ``[2]``): the image is zeroed outside the organ and slices are kept by organ presence.
        lesion_labels: lesion values of the label maps when ``organ_labels`` is given.
        category: a sub-folder of ``dataset_dir`` (an MVTec AD category).
        invert_masks: 2D masks mark defects with 0 on a non-zero background (e.g. PIPED).
    """
    if not 0.0 < calibration_fraction < 1.0:
        raise ValueError(f"calibration_fraction must be in (0, 1), got {calibration_fraction}")
    if resize_mode not in ("stretch", "pad"):
        raise ValueError(f"resize_mode must be 'stretch' or 'pad', got {resize_mode!r}")
    if category:
        dataset_dir = os.path.join(dataset_dir, category)
    layout, splits = index_dataset(dataset_dir)
    size = tuple(np.broadcast_to(np.asarray(image_size), (2,)).tolist())
    resize = Compose(
        ([PadToSquared(["image", "mask"])] if resize_mode == "pad" else [])
        + [Resized(["image", "mask"], spatial_size=size, mode=("bilinear", "nearest"), anti_aliasing=(True, False))]
    )
    scale = intensity_transform(intensity, percentiles, hu_window)

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
        keys = ["image", "mask"]
        organ = []
        if organ_labels:
            keys = ["image", "mask", "organ"]
            organ = [
                SplitLabelsd("mask", "organ", organ_labels, lesion_labels),
                MaskIntensityd("image", mask_key="organ"),
            ]
        load = Compose(
            [
                LoadImaged(["image", "mask"], image_only=True, allow_missing_keys=True),
                EnsureChannelFirstd(["image", "mask"], allow_missing_keys=True),
                Orientationd(["image", "mask"], axcodes="RAS", allow_missing_keys=True),
                scale,
                *organ,
                VolumeToSlicesd(
                    keys,
                    axis=slice_axis,
                    slice_range=slice_range,
                    min_foreground=min_foreground,
                    select_key="organ" if organ_labels else None,
                ),
            ]
        )
        per_slice = Compose([DeleteItemsd("organ"), EnsureMaskd(), resize])

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
                    dtype=None,  # keep the bit depth for intensity="dtype"
                    allow_missing_keys=True,
                ),
                EnsureChannelFirstd(["image", "mask"], allow_missing_keys=True),
                scale,
                EnsureMaskd(invert=invert_masks),
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
