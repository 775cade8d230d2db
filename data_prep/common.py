"""Helpers shared by the converters: intensity scaling, NIfTI loading, PNG writing and patient-wise splits.

The geometry of slices is not decided here: volumes are loaded and reoriented with
:func:`multiad_monai.transforms.load_volume_for_slicing` (to :data:`~multiad_monai.transforms.SLICE_AXCODES`) and
cut along :data:`~multiad_monai.transforms.SLICE_AXIS` with :class:`~multiad_monai.transforms.VolumeToSlices`,
exactly as the package does for NIfTI input at training and inference time. A prepared PNG slice therefore shows
the patient as the model sees the same volume later: rows run anterior -> posterior, columns from the patient's
right to left (radiological display), slice indices from inferior to superior.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import nibabel as nib
import numpy as np
from PIL import Image

from multiad_monai.transforms import (
    SLICE_AXIS,
    VolumeToSlices,
    decode_palette,
    load_volume_for_slicing,
    oriented_shape,
)
from multiad_monai.utils import atomic_write
from multiad_monai.utils.errors import root_message

__all__ = [
    "GOOD",
    "UNGOOD",
    "NIFTI_EXTENSIONS",
    "BmadWriter",
    "add_split_arguments",
    "binary_mask",
    "check_slice_range",
    "check_volume_pair",
    "find_nifti",
    "iter_axial_slices",
    "load_volume",
    "nifti_stem",
    "percentile_to_uint8",
    "prepare_output_dir",
    "read_grey",
    "read_mask",
    "require_dir",
    "run_converter",
    "scale_to_uint8",
    "split_ids",
    "write_png",
]

GOOD, UNGOOD = "good", "Ungood"
NIFTI_EXTENSIONS = (".nii.gz", ".nii")


# ----------------------------------------------------------------------------------------------- intensities
def scale_to_uint8(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``[low, high]`` linearly to ``[0, 255]`` (values outside are clipped) and round to ``uint8``.

    Args:
        array: any numeric array (e.g. CT in HU with ``(low, high)`` a window such as ``(-200, 250)``).
        low: value mapped to 0.
        high: value mapped to 255; must be greater than ``low``.

    Returns:
        A ``uint8`` array of the same shape.
    """
    if not high > low:
        raise ValueError(f"the upper intensity bound ({high}) must be greater than the lower one ({low})")
    scaled = (np.asarray(array, dtype=np.float64) - low) / (high - low)
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def percentile_to_uint8(
    array: np.ndarray, lower: float = 0.5, upper: float = 99.5, where: np.ndarray | None = None
) -> np.ndarray:
    """Scale ``array`` to ``uint8`` between two percentiles of the selected voxels; unselected voxels become 0.

    Args:
        array: the volume (or image).
        lower: percentile mapped to 0.
        upper: percentile mapped to 255.
        where: boolean mask of the voxels the percentiles are computed on (e.g. the brain, ``array > 0``);
            default: all voxels.

    Returns:
        A ``uint8`` array of the same shape.

    Raises:
        ValueError: when ``where`` selects no voxel.
    """
    where = np.ones(array.shape, dtype=bool) if where is None else np.asarray(where, dtype=bool)
    if not where.any():
        raise ValueError("no voxel selected to compute the intensity percentiles")
    low, high = np.percentile(array[where], [lower, upper])
    if high <= low:  # constant foreground: map it to mid-grey
        low, high = low - 1.0, high + 1.0
    out = scale_to_uint8(array, float(low), float(high))
    out[~where] = 0
    return out


def binary_mask(array: np.ndarray) -> np.ndarray:
    """Binarise a mask (any value > 0 is foreground) to ``uint8`` 0/255."""
    return np.where(np.asarray(array) > 0, 255, 0).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- NIfTI volumes
def nifti_stem(path: str) -> str:
    """File name without its ``.nii`` / ``.nii.gz`` extension."""
    name = os.path.basename(path)
    for ext in NIFTI_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def find_nifti(folder: str, stem: str, what: str) -> str:
    """Return ``<folder>/<stem>.nii.gz`` or ``<folder>/<stem>.nii``, whichever exists.

    Raises:
        FileNotFoundError: naming the expected file and ``what`` it is (e.g. ``"flair image"``).
    """
    for ext in NIFTI_EXTENSIONS:
        path = os.path.join(folder, stem + ext)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"missing {what}: {os.path.join(folder, stem + NIFTI_EXTENSIONS[0])} (or .nii)")


def _open_volume(path: str) -> tuple[nib.Nifti1Image, tuple[int, ...]]:
    """Open a NIfTI file lazily (header only) and return it with its stored 3D shape, or raise naming ``path``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing volume {path}")
    try:
        image = nib.load(path)
    except Exception as e:  # nibabel raises many types for broken files
        raise ValueError(f"cannot read {path}: {e}") from e
    shape = tuple(image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ValueError(f"{path} is not a 3D volume (shape {shape})")
    return image, shape


def check_volume_pair(image_path: str, label_path: str) -> tuple[int, ...]:
    """Check from the headers only that both files exist, are 3D and have the same shape once oriented.

    Converters call it on every input pair before writing anything, so bad input fails early.

    Returns:
        The shape ``(H, W, D)`` of the volumes once reoriented for slicing (see
        :func:`multiad_monai.transforms.oriented_shape`): ``D``, at :data:`~multiad_monai.transforms.SLICE_AXIS`,
        is their number of axial slices.

    Raises:
        FileNotFoundError / ValueError: naming the file and the problem.
    """
    image, image_shape = _open_volume(image_path)
    label, label_shape = _open_volume(label_path)
    oriented = oriented_shape(image_shape, image.affine)
    if oriented != oriented_shape(label_shape, label.affine):
        hint = " but another orientation (see their affines)" if label_shape == image_shape else ""
        raise ValueError(
            f"{label_path} has shape {label_shape} but its image {image_path} has shape {image_shape}{hint}"
        )
    return oriented


def load_volume(path: str, integer: bool = False) -> np.ndarray:
    """Load a 3D NIfTI volume reoriented for slicing, with :func:`multiad_monai.transforms.load_volume_for_slicing`.

    Whatever the voxel order of the file (RAS, LPS, swapped or slice-first axes), the result is in
    :data:`~multiad_monai.transforms.SLICE_AXCODES`: axis 0 anterior -> posterior, axis 1 patient right -> left,
    axis 2 inferior -> superior. Only flips and axis swaps: no voxel is resampled and values are kept (so is the
    data type, but for ``uint16`` / ``uint32``, which torch holds as wider signed integers).

    Args:
        path: the ``.nii`` / ``.nii.gz`` file.
        integer: return integers (segmentations): floating-point data are rounded to ``int32``.

    Returns:
        The ``(H, W, D)`` array; a trailing singleton 4th axis is dropped.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: naming ``path`` when it cannot be read or is not 3D.
    """
    _open_volume(path)  # the header checks, with their messages
    array = load_volume_for_slicing(path).as_tensor()[0].numpy()
    if integer and not np.issubdtype(array.dtype, np.integer):
        array = np.rint(array).astype(np.int32)
    return array


def check_slice_range(slice_range: Sequence[int], depth: int, path: str = "") -> tuple[int, int]:
    """Return ``(start, stop)`` when ``0 <= start < stop <= depth``, else raise a ``ValueError`` naming ``path``."""
    start, stop = int(slice_range[0]), int(slice_range[1])
    if not 0 <= start < stop <= depth:
        raise ValueError(f"slice range [{start}, {stop}) is outside {path}, which has {depth} axial slices")
    return start, stop


def iter_axial_slices(
    image: np.ndarray, label: np.ndarray, slice_range: Sequence[int] | None = None, path: str = ""
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(index, image_slice, label_slice)`` cut by :class:`multiad_monai.transforms.VolumeToSlices`.

    Args:
        image: ``(H, W, D)`` volume from :func:`load_volume` (or derived from one voxel-wise, e.g. scaled).
        label: ``(H, W, D)`` segmentation from :func:`load_volume`.
        slice_range: ``(start, stop)`` slice indices, stop excluded; default: all slices.
        path: the image file, for the error message.

    Yields:
        The slice index (inferior -> superior) and the ``(H, W)`` image and label slices in radiological display.

    Raises:
        ValueError: when ``slice_range`` is not inside the volume.
    """
    if image.shape != label.shape:
        raise ValueError(f"the label of {path} has shape {label.shape} but the image has shape {image.shape}")
    depth = image.shape[SLICE_AXIS]
    start, stop = (0, depth) if slice_range is None else check_slice_range(slice_range, depth, path)
    slicer = VolumeToSlices(SLICE_AXIS, (start, stop))
    for image_slice, label_slice in zip(slicer(image[None]), slicer(label[None])):
        k = int(image_slice.meta["slice_index"])
        yield k, np.ascontiguousarray(image_slice.as_tensor()[0]), np.ascontiguousarray(label_slice.as_tensor()[0])


# ----------------------------------------------------------------------------------------------- 2D images
def read_grey(path: str) -> np.ndarray:
    """Read an image as a 2D 8-bit grey array (colour images are converted, 16-bit ones scaled down).

    Raises:
        ValueError: naming ``path`` when PIL cannot read it.
    """
    try:
        with Image.open(path) as image:
            if image.mode in ("I", "I;16", "I;16B", "I;16L"):
                array = np.asarray(image, dtype=np.float64)
                return scale_to_uint8(array, 0.0, 65535.0)
            return np.asarray(image.convert("L"))
    except Exception as e:
        raise ValueError(f"cannot read image {path}: {e}") from e


def read_mask(path: str) -> np.ndarray:
    """Read a mask (0/1, 0/255, grey or colour) as a 2D binary ``uint8`` 0/255 array.

    Raises:
        ValueError: naming ``path`` when PIL cannot read it.
    """
    try:
        with Image.open(path) as image:
            array = np.asarray(decode_palette(image))
    except Exception as e:
        raise ValueError(f"cannot read mask {path}: {e}") from e
    if array.ndim == 3:
        array = array.max(axis=-1)
    return binary_mask(array)


def write_png(path: str, array: np.ndarray) -> None:
    """Write a 2D ``uint8`` array as a grey PNG with :func:`multiad_monai.utils.atomic_write`.

    A crash never leaves a truncated PNG under the final name; the temporary name starts with a dot and
    ends with ``.tmp``, so dataset indexers ignore it.
    """
    array = np.asarray(array)
    if array.ndim != 2 or array.dtype != np.uint8:
        raise ValueError(f"{path}: expected a 2D uint8 array, got {array.dtype} of shape {array.shape}")
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def require_dir(path: str, what: str) -> str:
    """Return ``path`` when it is a folder, else raise ``FileNotFoundError("<what> folder <path> does not exist")``."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} folder {path} does not exist")
    return path


def prepare_output_dir(path: str) -> None:
    """Create the output folder; refuse a non-empty one so that no stale file of an earlier run is mixed in.

    Raises:
        FileExistsError: when ``path`` exists and is not an empty folder.
    """
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise FileExistsError(f"output folder {path} already exists and is not empty: remove it or pick another")
    os.makedirs(path, exist_ok=True)


class BmadWriter:
    """Write samples into the BMAD layout and count them.

    Args:
        root: the output folder (see :func:`prepare_output_dir`).
        with_masks: write ``label/`` masks for valid/test samples (all-zero ones for normal samples).

    Attributes:
        counts: ``Counter`` of written images keyed ``"<split>/<class>"`` (e.g. ``"test/Ungood"``).
    """

    def __init__(self, root: str, with_masks: bool) -> None:
        self.root = root
        self.with_masks = with_masks
        self.counts: Counter[str] = Counter()

    def image_path(self, split: str, cls: str, name: str) -> str:
        """Where the image ``name`` (without extension) of ``split``/``cls`` goes."""
        if split == "train":
            return os.path.join(self.root, "train", cls, name + ".png")
        return os.path.join(self.root, split, cls, "img", name + ".png")

    def write(self, split: str, cls: str, name: str, image: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Write one sample.

        Args:
            split: ``"train"``, ``"valid"`` or ``"test"``.
            cls: ``GOOD`` or ``UNGOOD`` (training takes ``GOOD`` only).
            name: file name without extension, naming the patient/volume and slice.
            image: 2D ``uint8`` image.
            mask: 2D mask of the image's size (binarised here); required for anomalous valid/test samples
                when writing masks, zeros when omitted for normal ones; ignored for training samples.
        """
        if split not in ("train", "valid", "test") or cls not in (GOOD, UNGOOD) or (split == "train" and cls != GOOD):
            raise ValueError(f"cannot write {name} to {split}/{cls}: training takes normal samples only")
        write_png(self.image_path(split, cls, name), image)
        if split != "train" and self.with_masks:
            if mask is None:
                if cls == UNGOOD:
                    raise ValueError(f"anomalous sample {name} has no mask")
                mask = np.zeros(image.shape, dtype=np.uint8)
            if mask.shape != image.shape:
                raise ValueError(f"mask of {name} has size {mask.shape} but the image has size {image.shape}")
            write_png(os.path.join(self.root, split, cls, "label", name + ".png"), binary_mask(mask))
        self.counts[f"{split}/{cls}"] += 1


# ----------------------------------------------------------------------------------------------- splits
def split_ids(ids: Iterable[str], fractions: Mapping[str, float], seed: int = 0, rest: str = "train") -> dict[str, str]:
    """Assign patient (or volume) ids to splits at random, reproducibly.

    The sorted unique ids are shuffled with ``numpy.random.default_rng(seed)``; each split of ``fractions``
    takes ``round(fraction * n)`` ids (at least one when its fraction is > 0), in the mapping's order, and
    the remaining ids go to ``rest``.

    Args:
        ids: patient ids (duplicates are ignored).
        fractions: e.g. ``{"valid": 0.1, "test": 0.2}``.
        seed: random seed.
        rest: split of the remaining ids.

    Returns:
        ``{id: split}``.

    Raises:
        ValueError: for fractions outside ``[0, 1)``, summing to 1 or more, or too few ids to give every
            requested split (and ``rest``) at least one.
    """
    unique = sorted(set(ids))
    for split, fraction in fractions.items():
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"the {split} fraction must be in [0, 1), got {fraction}")
    if sum(fractions.values()) >= 1.0:
        raise ValueError(f"split fractions {dict(fractions)} sum to 1 or more: nothing left for {rest}")
    n = len(unique)
    sizes = {split: max(1, round(f * n)) if f > 0 else 0 for split, f in fractions.items()}
    if sum(sizes.values()) >= n:
        raise ValueError(f"{n} patients are too few for split fractions {dict(fractions)} and a {rest} split")
    order = [unique[i] for i in np.random.default_rng(seed).permutation(n)]
    assignment, start = {}, 0
    for split, size in sizes.items():
        assignment.update({i: split for i in order[start : start + size]})
        start += size
    assignment.update({i: rest for i in order[start:]})
    return assignment


def add_split_arguments(
    parser: argparse.ArgumentParser, valid_fraction: float, test_fraction: float | None = None
) -> None:
    """Add ``--seed``, ``--valid_fraction`` and (when ``test_fraction`` is given) ``--test_fraction``."""
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient-wise split (default: %(default)s)")
    parser.add_argument(
        "--valid_fraction", type=float, default=valid_fraction, help="share of patients in valid/ (%(default)s)"
    )
    if test_fraction is not None:
        parser.add_argument(
            "--test_fraction", type=float, default=test_fraction, help="share of patients in test/ (%(default)s)"
        )


def run_converter(prog: str, convert: Callable[[], Mapping[str, int]]) -> int:
    """Run a converter from a ``main``: log to stderr, print the counts, turn bad input into exit status 2.

    Args:
        prog: the tool's name, for messages.
        convert: the conversion, returning the written-image counts keyed ``"<split>/<class>"``.

    Returns:
        0 on success, 2 when the input is bad (the error, which names the file or folder, is printed), 1 for any
        other error: its traceback, then its message as the last line.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        counts = convert()
    except (OSError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a reader's own error type (SimpleITK's RuntimeError, ...): the message last
        traceback.print_exc()
        message = " ".join(root_message(e).split())  # one line, whatever the reader's message spans
        print(f"{prog}: error: {message} (the full traceback is above)", file=sys.stderr)
        return 1
    for key in sorted(counts):
        print(f"{key}: {counts[key]}")
    return 0
