"""BTCV and LiTS CT volumes to BMAD-style liver slices.

Inputs:

- BTCV (``<btcv_dir>/img/imgXXXX.nii.gz`` + ``<btcv_dir>/label/labelXXXX.nii.gz``, liver label 6): its liver
  slices are the normal training images (``train/good``).
- LiTS (``<lits_dir>/volume-N.nii`` + ``<lits_dir>/segmentation-N.nii``, 1 liver, 2 tumour): its volumes are
  split into valid and test; liver slices with tumour go to ``Ungood`` with the tumour mask, the others to
  ``good`` with an all-zero mask.

Every CT is windowed (default [-200, 250] HU) to 0-255 and everything outside the liver (tumour included) is
set to 0. Only axial slices with at least ``--min_liver_pixels`` liver pixels are kept. Slices follow the package's
convention (:data:`multiad_monai.transforms.SLICE_AXCODES`): rows run anterior -> posterior and columns from the
patient's right to left, whatever the voxel order of the file (RAS, LPS, ...), and ``k`` counts from the most
inferior slice. Files are named ``<volume>_slice<k>.png`` (e.g. ``img0001_slice045.png``, ``volume-12_slice210.png``).

Usage::

    python -m data_prep.liver --lits_dir LiTS --btcv_dir BTCV/RawData/Training --output_dir data/liver
"""

from __future__ import annotations

import argparse
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np

from data_prep.common import (
    GOOD,
    NIFTI_EXTENSIONS,
    UNGOOD,
    BmadWriter,
    add_split_arguments,
    check_volume_pair,
    find_nifti,
    iter_axial_slices,
    load_volume,
    nifti_stem,
    prepare_output_dir,
    require_dir,
    run_converter,
    scale_to_uint8,
    split_ids,
)

__all__ = ["find_btcv", "find_lits", "warn_if_not_hu", "liver_slices", "convert_liver", "main"]

logger = logging.getLogger(__name__)


def _volumes(folder: str, prefix: str, what: str) -> list[str]:
    """NIfTI files of ``folder`` whose name starts with ``prefix``, sorted; raise naming the folder if none."""
    files = sorted(
        os.path.join(folder, f)
        for f in os.listdir(require_dir(folder, what))
        if f.startswith(prefix) and f.endswith(NIFTI_EXTENSIONS)
    )
    if not files:
        raise ValueError(f"no {what} volume ({prefix}*.nii[.gz]) in {folder}")
    return files


def find_btcv(btcv_dir: str) -> list[tuple[str, str]]:
    """Pair BTCV ``img/imgXXXX.nii.gz`` with ``label/labelXXXX.nii.gz``, checking both headers.

    Raises:
        FileNotFoundError / ValueError: naming the missing folder or file, or the mismatched volume.
    """
    pairs = []
    for image in _volumes(os.path.join(require_dir(btcv_dir, "BTCV input"), "img"), "img", "BTCV image"):
        label = find_nifti(os.path.join(btcv_dir, "label"), "label" + nifti_stem(image)[3:], f"label of {image}")
        check_volume_pair(image, label)
        pairs.append((image, label))
    return pairs


def find_lits(lits_dir: str) -> list[tuple[str, str]]:
    """Pair LiTS ``volume-N.nii`` with ``segmentation-N.nii``, checking both headers.

    Raises:
        FileNotFoundError / ValueError: naming the missing folder or file, or the mismatched volume.
    """
    pairs = []
    for image in _volumes(lits_dir, "volume-", "LiTS"):
        number = nifti_stem(image)[len("volume-") :]
        label = find_nifti(lits_dir, f"segmentation-{number}", f"segmentation of {image}")
        check_volume_pair(image, label)
        pairs.append((image, label))
    return pairs


def warn_if_not_hu(volume: np.ndarray, path: str) -> bool:
    """Log a warning naming ``path`` when a CT is clearly not in Hounsfield units (values all within 0-255).

    Returns:
        ``True`` when the warning was given.
    """
    low, high = float(volume.min()), float(volume.max())
    if low >= 0 and high <= 255:
        logger.warning(
            f"{path} does not look like CT in Hounsfield units (values in [{low:g}, {high:g}]): "
            "the HU window will give meaningless images"
        )
        return True
    return False


def liver_slices(
    image_path: str,
    label_path: str,
    organ_labels: Sequence[int],
    window: Sequence[float] = (-200.0, 250.0),
    min_liver_pixels: int = 100,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(index, image, label)`` for the axial slices of a CT holding enough liver.

    Args:
        image_path: CT volume in HU.
        label_path: its segmentation.
        organ_labels: label values making up the liver (LiTS: liver and tumour; BTCV: liver).
        window: HU ``(low, high)`` mapped to 0 and 255.
        min_liver_pixels: minimum number of liver pixels of a kept slice.

    Yields:
        The slice index (inferior -> superior), the windowed ``uint8`` slice with everything outside the liver set
        to 0, and the label slice, both in the display of :func:`data_prep.common.iter_axial_slices`.
    """
    volume = load_volume(image_path)
    label = load_volume(label_path, integer=True)
    warn_if_not_hu(volume, image_path)
    has_organ = False
    # slice by slice: a whole LiTS volume in floating point would take gigabytes
    for k, ct, label_slice in iter_axial_slices(volume, label, path=image_path):
        organ = np.isin(label_slice, organ_labels)
        has_organ = has_organ or bool(organ.any())
        if int(organ.sum()) >= min_liver_pixels:
            image = scale_to_uint8(ct, *window)
            image[~organ] = 0
            yield k, image, label_slice
    if not has_organ:
        logger.warning(f"{label_path} has no voxel labelled {list(organ_labels)}: check the liver label options")


def convert_liver(
    lits_dir: str,
    btcv_dir: str,
    output_dir: str,
    window: Sequence[float] = (-200.0, 250.0),
    min_liver_pixels: int = 100,
    btcv_liver_label: int = 6,
    lits_liver_label: int = 1,
    lits_tumor_label: int = 2,
    valid_fraction: float = 0.1,
    seed: int = 0,
) -> Counter[str]:
    """Convert BTCV (training) and LiTS (valid/test) to the BMAD layout (see the module docstring).

    Args:
        lits_dir: folder of ``volume-N.nii`` and ``segmentation-N.nii``.
        btcv_dir: folder holding ``img/`` and ``label/``.
        output_dir: new (or empty) output folder.
        window: HU window ``(low, high)``.
        min_liver_pixels: minimum liver pixels of a kept slice.
        btcv_liver_label: liver value of the BTCV labels.
        lits_liver_label: liver value of the LiTS segmentations.
        lits_tumor_label: tumour value of the LiTS segmentations.
        valid_fraction: share of LiTS volumes in ``valid/`` (the others go to ``test/``).
        seed: seed of the volume split.

    Returns:
        Written images per ``"<split>/<class>"``.
    """
    if not window[1] > window[0]:
        raise ValueError(f"the HU window must be (low, high) with low < high, got {tuple(window)}")
    btcv, lits = find_btcv(btcv_dir), find_lits(lits_dir)
    assignment = split_ids([nifti_stem(image) for image, _ in lits], {"valid": valid_fraction}, seed, rest="test")
    prepare_output_dir(output_dir)
    writer = BmadWriter(output_dir, with_masks=True)
    for image_path, label_path in btcv:
        for k, image, _ in liver_slices(image_path, label_path, [btcv_liver_label], window, min_liver_pixels):
            writer.write("train", GOOD, f"{nifti_stem(image_path)}_slice{k:03d}", image)
    organ_labels = [lits_liver_label, lits_tumor_label]
    for image_path, label_path in lits:
        name, split = nifti_stem(image_path), assignment[nifti_stem(image_path)]
        for k, image, label in liver_slices(image_path, label_path, organ_labels, window, min_liver_pixels):
            tumor = label == lits_tumor_label
            writer.write(split, UNGOOD if tumor.any() else GOOD, f"{name}_slice{k:03d}", image, tumor)
    logger.info(f"{len(btcv)} BTCV + {len(lits)} LiTS volumes -> {output_dir}: {dict(sorted(writer.counts.items()))}")
    return writer.counts


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m data_prep.liver --lits_dir L --btcv_dir B --output_dir OUT [options]``."""
    parser = argparse.ArgumentParser(prog="data_prep.liver", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lits_dir", required=True, help="folder of LiTS volume-N.nii / segmentation-N.nii")
    parser.add_argument("--btcv_dir", required=True, help="BTCV folder holding img/ and label/")
    parser.add_argument("--output_dir", required=True, help="new or empty folder for the BMAD layout")
    parser.add_argument(
        "--window", type=float, nargs=2, default=[-200.0, 250.0], metavar=("LOW", "HIGH"), help="HU window"
    )
    parser.add_argument("--min_liver_pixels", type=int, default=100, help="(default: %(default)s)")
    parser.add_argument("--btcv_liver_label", type=int, default=6, help="(default: %(default)s)")
    parser.add_argument("--lits_liver_label", type=int, default=1, help="(default: %(default)s)")
    parser.add_argument("--lits_tumor_label", type=int, default=2, help="(default: %(default)s)")
    add_split_arguments(parser, valid_fraction=0.1)
    args = parser.parse_args(argv)
    return run_converter(
        parser.prog,
        lambda: convert_liver(
            args.lits_dir,
            args.btcv_dir,
            args.output_dir,
            window=args.window,
            min_liver_pixels=args.min_liver_pixels,
            btcv_liver_label=args.btcv_liver_label,
            lits_liver_label=args.lits_liver_label,
            lits_tumor_label=args.lits_tumor_label,
            valid_fraction=args.valid_fraction,
            seed=args.seed,
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
