"""The one preprocessing definition: a :class:`~multiad_monai.recipe.Recipe` in, MONAI transform chains out.

Training, evaluation, 2D and 3D inference and export all build their inputs here, so the network sees the
same pixels for the same file whatever the path. The resizing is invertible (``Compose.inverse``): inference
maps model-resolution anomaly maps back to each input's own geometry with the very transforms that shrank it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from monai.transforms import (
    CastToTyped,
    Compose,
    DeleteItemsd,
    EnsureChannelFirstd,
    LoadImaged,
    MaskIntensityd,
    Resized,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
)

from multiad_monai.transforms.array import image_reader
from multiad_monai.transforms.dicom import register_dicom_reader
from multiad_monai.transforms.dictionary import (
    CheckFinited,
    CheckHounsfieldd,
    EnsureMaskd,
    EnsureRGBd,
    OrientForSlicingd,
    PadToSquared,
    ScaleIntensityByDtyped,
    SplitLabelsd,
    VolumeToSlicesd,
)

if TYPE_CHECKING:  # the recipe module imports the slice convention from this package
    from multiad_monai.recipe import Recipe

__all__ = [
    "image_transform",
    "intensity_transform",
    "network_input",
    "resize_transform",
    "slice_transform",
    "slicing_transform",
    "volume_transform",
]

KEYS = ("image", "mask")


def intensity_transform(recipe: Recipe) -> Compose:
    """The image's intensity mapping to ``[0, 1]`` (``recipe.intensity``: percentile, dtype or hu)."""
    to_float = CastToTyped("image", dtype=torch.float32)
    if recipe.intensity == "percentile":
        low, high = recipe.percentiles
        return Compose([to_float, ScaleIntensityRangePercentilesd("image", low, high, b_min=0.0, b_max=1.0, clip=True)])
    if recipe.intensity == "dtype":
        return Compose([ScaleIntensityByDtyped("image")])
    window = ScaleIntensityRanged("image", *recipe.hu_window, b_min=0.0, b_max=1.0, clip=True)
    return Compose([to_float, CheckHounsfieldd("image"), window])


def resize_transform(recipe: Recipe) -> Compose:
    """Image (bilinear, anti-aliased) and mask (nearest) to ``recipe.image_size``, padded to a square first
    when ``recipe.resize_mode == "pad"``. Invertible."""
    pad = [PadToSquared(KEYS)] if recipe.resize_mode == "pad" else []
    resize = Resized(
        KEYS,
        spatial_size=recipe.image_size,
        mode=("bilinear", "nearest"),
        anti_aliasing=(True, False),
        allow_missing_keys=True,
    )
    return Compose([*pad, resize])


def network_input() -> EnsureRGBd:
    """Last step, applied when a sample is read (datasets keep one channel in memory): three channels."""
    return EnsureRGBd("image")


def image_transform(recipe: Recipe, invert_masks: bool = False, resize: bool = True) -> Compose:
    """A 2D file ``{image: path[, mask: path]}`` -> ``{image (C, S, S) in [0, 1], mask (1, S, S)}``.

    Args:
        recipe: the model's recipe.
        invert_masks: masks mark defects with 0 on a non-zero background (e.g. PIPED).
        resize: end with :func:`resize_transform`; False keeps the file's size (inference resizes itself, to
            keep the original for overlays).
    """
    limit = 2 * max(recipe.image_size)  # larger files are reduced on reading: memory bounded by the model
    load = [
        LoadImaged("image", reader=image_reader(limit), image_only=True, dtype=None),  # dtype: keep the bit depth
        LoadImaged("mask", reader=image_reader(limit, mask=True), image_only=True, allow_missing_keys=True),
    ]
    return Compose(
        [
            *load,
            EnsureChannelFirstd(KEYS, allow_missing_keys=True),
            CheckFinited("image"),
            intensity_transform(recipe),
            EnsureMaskd(invert=invert_masks),
            *([resize_transform(recipe)] if resize else []),
        ]
    )


def volume_transform(recipe: Recipe, labels: bool = True) -> Compose:
    """A 3D file ``{image: path[, mask: path]}`` -> the volume ``{image (1, X, Y, Z) in [0, 1][, mask, organ]}``.

    ``image`` may also be a DICOM series: a folder, a multi-frame file, or the list of a series' files (see
    :mod:`multiad_monai.transforms.dicom`).

    The volume is reoriented to ``SLICE_AXCODES`` (the convention data_prep writes its PNG slices in),
    intensity-scaled as a whole and, when ``recipe.organ_labels`` is set and a label map is given, masked to
    the organ. Cut it with :func:`slicing_transform` and finish each slice with :func:`slice_transform`.

    Args:
        recipe: the model's recipe.
        labels: the input has a label map (``mask``); organ masking needs one.
    """
    organ = []
    if recipe.organ_labels and labels:
        organ = [
            SplitLabelsd("mask", "organ", recipe.organ_labels, recipe.lesion_labels),
            MaskIntensityd("image", mask_key="organ"),
        ]
    load = LoadImaged(KEYS, image_only=True, dtype=None, allow_missing_keys=True)  # dtype: for intensity="dtype"
    register_dicom_reader(load)  # DICOM series folders and multi-frame files; other files keep MONAI's readers
    return Compose(
        [
            load,
            EnsureChannelFirstd(KEYS, allow_missing_keys=True),
            OrientForSlicingd(KEYS, allow_missing_keys=True),
            CheckFinited("image"),
            intensity_transform(recipe),
            *organ,
        ]
    )


def slicing_transform(
    recipe: Recipe, slice_range: Sequence[int] | None = None, min_foreground: float = 0.0, labels: bool = True
) -> VolumeToSlicesd:
    """A volume of :func:`volume_transform` -> a list of slice dicts ``{image (1, H, W)[, mask, organ], label}``.

    Args:
        recipe: the model's recipe (``slice_axis``; organ selection when ``organ_labels`` is set).
        slice_range: which slices to keep, see :class:`multiad_monai.transforms.VolumeToSlicesd`.
        min_foreground: as there.
        labels: as in :func:`volume_transform`.
    """
    organ = bool(recipe.organ_labels and labels)
    return VolumeToSlicesd(
        [*KEYS, "organ"] if organ else list(KEYS),
        axis=recipe.slice_axis,
        slice_range=slice_range,
        min_foreground=min_foreground,
        select_key="organ" if organ else None,
    )


def slice_transform(recipe: Recipe) -> Compose:
    """One slice of :func:`volume_transform` -> ``{image (1, S, S), mask (1, S, S), label}``."""
    return Compose([DeleteItemsd("organ"), EnsureMaskd(), resize_transform(recipe)])
