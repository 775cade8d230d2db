"""Array transforms: 3D volume -> 2D slices, three-channel images for the ImageNet teacher."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import SpatialPad, Transform
from monai.utils import TransformBackends, convert_to_tensor

__all__ = ["CheckHounsfield", "EnsureRGB", "PadToSquare", "ScaleIntensityByDtype", "VolumeToSlices", "source_name"]


def source_name(img: NdarrayOrTensor) -> str:
    """The file an array came from (MetaTensor ``filename_or_obj``), for error messages."""
    meta = getattr(img, "meta", {}) or {}
    return str(meta.get("filename_or_obj", "<array>"))


class EnsureRGB(Transform):
    """Channel-first image ``(C, H, W)`` -> ``(3, H, W)``: grey is repeated, alpha dropped.

    Raises a ``ValueError`` naming the file for any other channel count.
    """

    backend = [TransformBackends.TORCH]

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        img = convert_to_tensor(img, track_meta=True)
        channels = img.shape[0]
        if img.ndim != 3 or channels not in (1, 2, 3, 4):
            raise ValueError(
                f"expected a 2D image with 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA) channels, "
                f"got shape {tuple(img.shape)} from {source_name(img)}"
            )
        if channels in (1, 2):
            return img[:1].repeat(3, 1, 1)
        return img[:3]


class VolumeToSlices(Transform):
    """Cut a channel-first volume ``(1, H, W, D)`` into 2D slices ``(1, H, W)`` along one spatial axis.

    Each slice is a ``MetaTensor`` whose meta keeps the source file and gains ``slice_index``.

    Args:
        axis: spatial axis to slice (2 = axial for RAS-oriented volumes).
        slice_range: optional ``(start, stop)`` of slice indices to keep (Python slice semantics).
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, axis: int = 2, slice_range: Sequence[int] | None = None) -> None:
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2 (a spatial axis), got {axis}")
        self.axis = axis
        self.slice_range = tuple(slice_range) if slice_range is not None else None

    def indices(self, depth: int) -> range:
        start, stop = self.slice_range if self.slice_range else (0, depth)
        return range(max(0, start), min(depth, stop))

    def __call__(self, img: NdarrayOrTensor) -> list[torch.Tensor]:
        img = convert_to_tensor(img, track_meta=True)
        if img.ndim != 4 or img.shape[0] != 1:
            raise ValueError(
                f"expected a 3D volume (one channel, shape (1, H, W, D)), got shape {tuple(img.shape)} "
                f"from {source_name(img)}"
            )
        slices = []
        for index in self.indices(img.shape[self.axis + 1]):
            data = img.select(self.axis + 1, index)
            meta = dict(img.meta) if isinstance(img, MetaTensor) else {}
            meta["slice_index"] = index
            slices.append(MetaTensor(data.as_tensor() if isinstance(data, MetaTensor) else data, meta=meta))
        return slices


class ScaleIntensityByDtype(Transform):
    """Map an integer image to ``[0, 1]`` by its bit depth: 8-bit / 255, 16-bit / 65535; floats pass through.

    For natural (industrial) images, where contrast carries meaning and must not be stretched per image.
    16-bit PNGs arrive as int32 from PIL, so any wider integer holding values <= 65535 counts as 16-bit.
    """

    backend = [TransformBackends.TORCH]

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        img = convert_to_tensor(img, track_meta=True)
        if img.dtype.is_floating_point:
            return img.float()
        maximum = 255.0 if img.dtype == torch.uint8 else 65535.0
        if img.numel() and float(img.max()) > maximum:
            raise ValueError(
                f"{source_name(img)} holds integers above 16 bits ({float(img.max()):g}); expected 8/16-bit"
            )
        return img.float() / maximum


class PadToSquare(SpatialPad):
    """Zero-pad the shorter spatial side of ``(C, H, W)`` symmetrically so that ``H == W``.

    Resizing a padded image keeps its aspect ratio (e.g. a wide OCT B-scan keeps the retina's shape). As a
    ``SpatialPad`` it records itself on a ``MetaTensor`` and is invertible, so maps can be cropped back.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(spatial_size=-1, method="symmetric", **kwargs)

    def compute_pad_width(self, spatial_shape: Sequence[int]) -> tuple[tuple[int, int]]:
        side = max(spatial_shape)
        widths = [side - size for size in spatial_shape]
        return tuple([(0, 0)] + [(w // 2, w - w // 2) for w in widths])  # type: ignore[return-value]


class CheckHounsfield(Transform):
    """Pass a CT volume through, warning (with its file name) when it is clearly not in Hounsfield units."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        low, high = float(img.min()), float(img.max())
        if low >= 0 and high <= 255:
            warnings.warn(
                f"{source_name(img)} does not look like CT in Hounsfield units (values in [{low:g}, {high:g}], "
                "air should be near -1000): the HU window will give a wrong image",
                stacklevel=2,
            )
        return img
