"""Dictionary wrappers of the Multi-AD transforms."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Orientationd, Padd
from monai.utils import convert_to_tensor

from multiad_monai.transforms.array import (
    SLICE_AXCODES,
    SLICE_AXIS,
    CheckFinite,
    CheckHounsfield,
    EnsureRGB,
    OrientForSlicing,
    PadToSquare,
    ScaleIntensityByDtype,
    VolumeToSlices,
    source_name,
)

__all__ = [
    "CheckFinited",
    "CheckHounsfieldd",
    "EnsureMaskd",
    "EnsureRGBd",
    "OrientForSlicingd",
    "PadToSquared",
    "ScaleIntensityByDtyped",
    "SplitLabelsd",
    "TeacherFeaturesd",
    "VolumeToSlicesd",
]


class EnsureRGBd(MapTransform):
    """Dictionary version of :class:`EnsureRGB`."""

    backend = EnsureRGB.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = EnsureRGB()

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class EnsureMaskd(MapTransform):
    """Give every sample a binary ``(1, H, W)`` mask: all-zero when absent (normal images), else binarised.

    A mask whose spatial shape differs from its image raises a ``ValueError`` naming both files.

    Args:
        mask_key: key of the mask.
        image_key: key of the image whose shape the mask must match.
        invert: for datasets whose masks mark defects with 0 on a 255 background (e.g. PIPED).
    """

    def __init__(self, mask_key: str = "mask", image_key: str = "image", invert: bool = False) -> None:
        super().__init__([mask_key], allow_missing_keys=True)
        self.mask_key = mask_key
        self.image_key = image_key
        self.invert = invert

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        image = d[self.image_key]
        spatial = tuple(image.shape[1:])
        mask = d.get(self.mask_key)
        if mask is None or isinstance(mask, str) and not mask:
            d[self.mask_key] = torch.zeros((1, *spatial), dtype=torch.float32)
            return d
        if tuple(mask.shape[1:]) != spatial:
            raise ValueError(
                f"mask {source_name(mask)} has size {tuple(mask.shape[1:])} but its image "
                f"{source_name(image)} has size {spatial}"
            )
        colour = mask[:3] if mask.shape[0] >= 3 else mask[:1]  # decoded palette / RGB masks: any channel counts
        marked = (colour == 0).all(0, keepdim=True) if self.invert else (colour > 0).any(0, keepdim=True)
        d[self.mask_key] = marked.float()
        return d


class OrientForSlicingd(Orientationd):
    """Dictionary version of :class:`OrientForSlicing`: image and mask volumes alike, each by its own affine.

    Invertible: ``OrientForSlicingd(keys).inverse(d)`` restores the file's voxel order.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, lazy: bool = False) -> None:
        super().__init__(keys, axcodes=SLICE_AXCODES, labels=None, allow_missing_keys=allow_missing_keys, lazy=lazy)
        self.ornt_transform = OrientForSlicing(lazy=lazy)  # same axcodes, plus its input checks


class VolumeToSlicesd(MapTransform):
    """Slice image (and mask) volumes into a list of 2D sample dicts, one per slice.

    Each slice dict gets ``label`` = 1 if its mask slice has any lesion voxel, else 0. Slices whose
    foreground (image > ``foreground_threshold``) covers less than ``min_foreground`` of the slice are dropped.

    Args:
        keys: image key first, then optionally the mask key.
        axis: see :class:`VolumeToSlices`.
        slice_range: see :class:`VolumeToSlices`.
        min_foreground: minimum fraction of foreground pixels to keep a slice (0 keeps all).
        foreground_threshold: intensity above which a pixel counts as foreground.
        select_key: when given (e.g. an organ mask among ``keys``), foreground is measured on it instead of the
            image, so slices are selected by organ presence.
    """

    def __init__(
        self,
        keys: KeysCollection,
        axis: int = SLICE_AXIS,
        slice_range: Sequence[int] | None = None,
        min_foreground: float = 0.0,
        foreground_threshold: float = 0.05,
        select_key: str | None = None,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.slicer = VolumeToSlices(axis, slice_range)
        self.min_foreground = min_foreground
        self.foreground_threshold = foreground_threshold
        self.select_key = select_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> list[dict[Hashable, torch.Tensor]]:
        d = dict(data)
        image_key, *other_keys = self.keys
        present = [key for key in other_keys if key in d and not isinstance(d[key], str)]
        for key in present:
            if tuple(d[key].shape[1:]) != tuple(d[image_key].shape[1:]):
                raise ValueError(
                    f"{key} {source_name(d[key])} has size {tuple(d[key].shape[1:])} but its volume "
                    f"{source_name(d[image_key])} has size {tuple(d[image_key].shape[1:])}"
                )
        images = self.slicer(d[image_key])
        sliced = {key: self.slicer(d[key]) for key in present}
        samples = []
        selectors = sliced[self.select_key] if self.select_key else images
        for i, image in enumerate(images):
            if (selectors[i] > self.foreground_threshold).float().mean() < self.min_foreground:
                continue
            sample = {k: v for k, v in d.items() if k not in self.keys}
            sample[image_key] = image
            for key, slices in sliced.items():
                sample[key] = slices[i]
            mask_key = "mask" if "mask" in sliced else (other_keys[0] if other_keys else None)
            sample["label"] = int(bool(mask_key in sliced and (sliced[mask_key][i] > 0).any()))
            samples.append(sample)
        return samples


class ScaleIntensityByDtyped(MapTransform):
    """Dictionary version of :class:`ScaleIntensityByDtype`."""

    backend = ScaleIntensityByDtype.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scaler = ScaleIntensityByDtype()

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d


class PadToSquared(Padd):
    """Dictionary version of :class:`PadToSquare` (invertible). Image and mask must have the same size."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = True) -> None:
        super().__init__(keys, padder=PadToSquare(), allow_missing_keys=allow_missing_keys)


class CheckFinited(MapTransform):
    """Dictionary version of :class:`CheckFinite`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.checker = CheckFinite()

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.checker(d[key])
        return d


class CheckHounsfieldd(MapTransform):
    """Dictionary version of :class:`CheckHounsfield`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.checker = CheckHounsfield()

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.checker(d[key])
        return d


class SplitLabelsd(MapTransform):
    """Turn a label map into an organ mask and a lesion mask (e.g. LiTS: 1 liver, 2 tumour).

    Args:
        label_key: key of the label map; it is replaced by the binary lesion mask.
        organ_key: key receiving the binary organ mask (organ labels plus lesion labels: a lesion lies in its organ).
        organ_labels: label values of the organ.
        lesion_labels: label values of lesions.
    """

    def __init__(
        self,
        label_key: str = "mask",
        organ_key: str = "organ",
        organ_labels: Sequence[int] = (1,),
        lesion_labels: Sequence[int] = (2,),
    ) -> None:
        super().__init__([label_key], allow_missing_keys=True)
        self.label_key, self.organ_key = label_key, organ_key
        self.organ_labels, self.lesion_labels = list(organ_labels), list(lesion_labels)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if self.label_key not in d:
            raise ValueError(f"{source_name(d.get('image'))} has no label map: organ masking needs one")
        labels = d[self.label_key]
        lesion = torch.isin(labels, torch.tensor(self.lesion_labels, device=labels.device))
        organ = torch.isin(labels, torch.tensor(self.organ_labels + self.lesion_labels, device=labels.device))
        d[self.label_key] = lesion.float()
        d[self.organ_key] = organ.float()
        return d


class TeacherFeaturesd(MapTransform):
    """Add the frozen teacher's per-scale features of ``keys`` (one image) as ``<key>_features`` or ``output_key``.

    Under a ``monai.data.CacheDataset`` the teacher runs once per training image instead of once per iteration:
    valid only when no random transform follows, since the features must be those of the image the student sees.

    Args:
        keys: the image key (one).
        teacher: the frozen teacher encoder, kept in eval mode.
        output_key: where the list of ``(C_i, h_i, w_i)`` CPU tensors goes (default ``teacher_features``).
    """

    def __init__(self, keys: KeysCollection, teacher: torch.nn.Module, output_key: str = "teacher_features") -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f"TeacherFeaturesd takes one image key, got {self.keys}")
        self.teacher = teacher
        self.output_key = output_key

    @torch.no_grad()
    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        image = convert_to_tensor(d[self.keys[0]], track_meta=False)
        device = next(self.teacher.parameters()).device
        self.teacher.eval()
        d[self.output_key] = [f[0].cpu() for f in self.teacher(image[None].float().to(device))]
        return d
