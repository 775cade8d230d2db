"""Array transforms: 3D volume -> 2D slices, three-channel images for the ImageNet teacher.

The slice convention (declared with the recipe in :mod:`multiad_monai.recipe`) is applied here, once: a volume
is reoriented to :data:`SLICE_AXCODES` with :class:`OrientForSlicing` and cut along :data:`SLICE_AXIS` with
:class:`VolumeToSlices`. The offline converters (``data_prep``), the dataset transforms and the inference path all
go through it, so a model trained on prepared PNG slices sees the same display when the NIfTI of the same patient
is scored.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.config import DtypeLike, NdarrayOrTensor
from monai.data import MetaTensor, PILReader
from monai.transforms import EnsureChannelFirst, LoadImage, Orientation, SpatialPad, Transform
from monai.utils import TransformBackends, convert_to_tensor
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform
from PIL import Image

from multiad_monai.recipe import SLICE_AXCODES, SLICE_AXIS
from multiad_monai.transforms.dicom import DicomSeriesError, register_dicom_reader
from multiad_monai.utils.errors import error_reason

__all__ = [
    "SLICE_AXCODES",
    "SLICE_AXIS",
    "CheckFinite",
    "CheckHounsfield",
    "EnsureRGB",
    "OrientForSlicing",
    "PadToSquare",
    "ScaleIntensityByDtype",
    "VolumeToSlices",
    "load_volume_for_slicing",
    "oriented_shape",
    "decode_palette",
    "image_reader",
    "shrink",
    "source_name",
]


def decode_palette(image: Image.Image) -> Image.Image:
    """Palette images (PIL modes ``P``, ``PA``) decoded through their palette: RGB, or RGBA with transparency.

    PIL otherwise hands out palette indices, an image that looks like noise to the network. Other modes pass.
    """
    if image.mode == "PA" or (image.mode == "P" and "transparency" in image.info):
        return image.convert("RGBA")
    if image.mode == "P":
        return image.convert("RGB")
    return image


def shrink(image: Image.Image, limit: int | None, resample: int = Image.Resampling.BOX) -> Image.Image:
    """Reduce an image whose longer side exceeds ``limit`` by an integer factor (box filter; ``NEAREST`` for
    masks) while it is still 8/16-bit, so memory stays bounded by the model's size, not the file's."""
    factor = max(image.size) // limit if limit else 0
    if factor < 2:
        return image
    width, height = image.size
    size = (-(-width // factor), -(-height // factor))  # rounded up, as Image.reduce
    if resample == Image.Resampling.BOX and image.mode not in ("I;16", "I;16B", "I;16L"):
        return image.reduce(factor)
    return image.resize(size, resample)


def image_reader(limit: int | None = None, mask: bool = False) -> PILReader:
    """The 2D reader of training, evaluation and inference: (H, W) row-major, bit depth kept, palettes decoded,
    and files whose longer side is more than twice ``limit`` reduced on reading (see :func:`shrink`).

    Args:
        limit: the side images need at most (two model input sizes: the anti-aliased resize follows).
        mask: read masks (nearest-neighbour reduction keeps them binary).
    """
    resample = Image.Resampling.NEAREST if mask else Image.Resampling.BOX
    return PILReader(converter=lambda image: shrink(decode_palette(image), limit, resample), reverse_indexing=False)


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


def oriented_shape(spatial_shape: Sequence[int], affine: np.ndarray) -> tuple[int, int, int]:
    """Spatial shape a volume gets from :class:`OrientForSlicing`, from its header alone (no voxel is read).

    Args:
        spatial_shape: the stored shape ``(X, Y, Z)``.
        affine: the stored voxel-to-world (RAS) affine ``(4, 4)``, e.g. ``nibabel.load(path).affine``.

    Returns:
        ``(H, W, D)``: rows and columns of an axial slice and the number of axial slices.
    """
    if len(spatial_shape) != 3:
        raise ValueError(f"expected a 3D spatial shape, got {tuple(spatial_shape)}")
    transform = ornt_transform(io_orientation(np.asarray(affine)), axcodes2ornt(SLICE_AXCODES))
    shape = [0, 0, 0]
    for size, (axis, _) in zip(spatial_shape, transform):
        shape[int(axis)] = int(size)
    return shape[0], shape[1], shape[2]


class OrientForSlicing(Orientation):
    """Reorient a channel-first volume ``(C, X, Y, Z)`` to :data:`SLICE_AXCODES`, ready for :class:`VolumeToSlices`.

    A MONAI :class:`~monai.transforms.Orientation` with the axis codes fixed (flips and axis swaps only, no
    resampling), invertible like it: ``OrientForSlicing().inverse(x)`` puts a map back in the file's voxel order.
    Volumes stored RAS, LPS, with swapped axes or slice-first give the same oriented volume.

    Raises:
        ValueError: naming the file, for anything but a 3D channel-first ``MetaTensor`` (without its affine a
            volume has no known orientation: load it with ``LoadImage`` or :func:`load_volume_for_slicing`).
    """

    def __init__(self, lazy: bool = False) -> None:
        super().__init__(axcodes=SLICE_AXCODES, labels=None, lazy=lazy)  # None: honour an LPS "space"

    def __call__(self, data_array: torch.Tensor, lazy: bool | None = None) -> torch.Tensor:
        if not isinstance(data_array, MetaTensor):
            raise ValueError(
                f"expected a MetaTensor carrying its affine, got {type(data_array).__name__}: load volumes with "
                "monai.transforms.LoadImage(d) or multiad_monai.transforms.load_volume_for_slicing"
            )
        spatial = tuple(data_array.peek_pending_shape())
        if len(spatial) != 3:
            raise ValueError(
                f"expected a channel-first 3D volume (C, X, Y, Z), got shape {tuple(data_array.shape)} "
                f"from {source_name(data_array)}"
            )
        return super().__call__(data_array, lazy=lazy)


def load_volume_for_slicing(path: str, dtype: DtypeLike | None = None) -> MetaTensor:
    """Load a one-channel 3D image (NIfTI, ..., a DICOM series folder) and reorient it with :class:`OrientForSlicing`.

    Cut the result with ``VolumeToSlices(axis=SLICE_AXIS)`` (or ``volume[0, :, :, k]``) to get axial slices
    in display orientation.

    Args:
        path: the file.
        dtype: data type of the result; ``None`` keeps the file's (integers stay integers).

    Returns:
        ``(1, H, W, D)`` ``MetaTensor`` in :data:`SLICE_AXCODES`, its meta naming ``path``.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: naming ``path`` when it cannot be read or is not a one-channel 3D volume.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"missing volume {path}")
    loader = LoadImage(image_only=True, dtype=dtype)
    register_dicom_reader(loader)
    try:
        volume = EnsureChannelFirst()(loader(path))
    except (DicomSeriesError, ImportError):  # their messages name the series and the fix
        raise
    except Exception as e:  # the readers raise many types for broken files
        raise ValueError(f"cannot read {path}: {error_reason(e)}") from e
    if volume.ndim != 4 or volume.shape[0] != 1:
        raise ValueError(f"{path} is not a one-channel 3D volume (shape {tuple(volume.shape)} once channel-first)")
    return OrientForSlicing()(volume)


class VolumeToSlices(Transform):
    """Cut a channel-first volume ``(1, H, W, D)`` into 2D slices ``(1, H, W)`` along one spatial axis.

    Each slice is a ``MetaTensor`` whose meta keeps the source file and gains ``slice_index``. For axial slices
    in display orientation, give it a volume from :class:`OrientForSlicing` and the default ``axis``.

    Args:
        axis: spatial axis to slice (default :data:`SLICE_AXIS`: axial after :class:`OrientForSlicing`).
        slice_range: optional ``(start, stop)`` of slice indices to keep (Python slice semantics).
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, axis: int = SLICE_AXIS, slice_range: Sequence[int] | None = None) -> None:
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


class CheckFinite(Transform):
    """Refuse an image or volume holding NaN or Inf, naming the file; warn when it is all zero.

    A non-finite voxel would make the anomaly map NaN and the image look normal (``nan > threshold`` is false),
    so such inputs are never scored: the message says how many voxels are affected and what to do.
    """

    backend = [TransformBackends.TORCH]

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        data = convert_to_tensor(img, track_meta=False)
        if data.dtype.is_floating_point:
            bad = int((~torch.isfinite(data)).sum())
            if bad:
                raise ValueError(
                    f"{source_name(img)} holds {bad} non-finite value(s) (NaN or Inf) out of {data.numel()}: it "
                    "cannot be scored; replace them (e.g. by the background value) and run again"
                )
        if data.numel() and not bool(data.any()):
            warnings.warn(f"{source_name(img)} is all zero: its map and score carry no information", stacklevel=2)
        return img


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
