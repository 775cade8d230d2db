"""BraTS2021 volumes to BMAD-style brain slices.

Input: ``<input_dir>/BraTS2021_XXXXX/BraTS2021_XXXXX_{flair,t1,t1ce,t2,seg}.nii.gz`` (one folder per patient).

For every patient, the chosen modality is scaled to 0-255 between the 0.5 and 99.5 percentiles of its brain
voxels (> 0) and cut into axial slices within ``--slice_range`` (BMAD keeps 60-99), in the package's slice
convention (:data:`multiad_monai.transforms.SLICE_AXCODES`: rows anterior -> posterior, columns patient right ->
left, slice indices inferior -> superior; BraTS files are stored LPS, so indices are those of the file). Slices
with less than ``--min_brain_fraction`` brain are skipped. A slice is normal when it holds no tumour voxel
(seg > 0), anomalous otherwise. Patients are split into train / valid / test; training patients give their
normal slices to ``train/good``, valid and test patients give normal slices to ``good`` (with an all-zero mask)
and anomalous ones to ``Ungood`` with the binarised tumour mask. Files are named ``<patient>_slice<k>.png``.

Usage::

    python -m data_prep.brats --input_dir BraTS2021_Training_Data --output_dir data/brats
"""

from __future__ import annotations

import argparse
import logging
import os
from collections import Counter
from collections.abc import Sequence

import numpy as np

from data_prep.common import (
    GOOD,
    UNGOOD,
    BmadWriter,
    add_split_arguments,
    check_slice_range,
    check_volume_pair,
    find_nifti,
    iter_axial_slices,
    load_volume,
    percentile_to_uint8,
    prepare_output_dir,
    require_dir,
    run_converter,
    split_ids,
)
from multiad_monai.transforms import SLICE_AXIS

__all__ = ["MODALITIES", "find_patients", "patient_files", "convert_patient", "convert_brats", "main"]

logger = logging.getLogger(__name__)

MODALITIES = ("flair", "t1", "t1ce", "t2")


def find_patients(input_dir: str) -> list[str]:
    """List the patient folders (non-hidden sub-folders) of a BraTS release, sorted.

    Raises:
        FileNotFoundError: when ``input_dir`` does not exist.
        ValueError: when it holds no patient folder.
    """
    require_dir(input_dir, "BraTS input")
    patients = sorted(
        d for d in os.listdir(input_dir) if not d.startswith(".") and os.path.isdir(os.path.join(input_dir, d))
    )
    if not patients:
        raise ValueError(f"no patient folder (BraTS2021_XXXXX/) in {input_dir}")
    return patients


def patient_files(
    patient_dir: str, modality: str = "flair", slice_range: Sequence[int] | None = None
) -> tuple[str, str]:
    """Return ``(image, segmentation)`` paths of a patient folder, checked from their headers.

    Raises:
        FileNotFoundError / ValueError: naming the missing file, or the file that is not 3D, whose shape differs
            from the other's or has too few slices for ``slice_range``.
    """
    patient = os.path.basename(os.path.normpath(patient_dir))
    image_path = find_nifti(patient_dir, f"{patient}_{modality}", f"{modality} image")
    seg_path = find_nifti(patient_dir, f"{patient}_seg", "segmentation")
    shape = check_volume_pair(image_path, seg_path)
    if slice_range is not None:
        check_slice_range(slice_range, shape[SLICE_AXIS], image_path)
    return image_path, seg_path


def convert_patient(
    patient_dir: str,
    split: str,
    writer: BmadWriter,
    modality: str = "flair",
    slice_range: Sequence[int] = (60, 100),
    min_brain_fraction: float = 0.05,
    percentiles: Sequence[float] = (0.5, 99.5),
) -> None:
    """Write the slices of one patient to ``split``.

    Args:
        patient_dir: ``.../BraTS2021_XXXXX``; its files are ``BraTS2021_XXXXX_<modality>.nii.gz`` and ``_seg``.
        split: ``"train"`` (normal slices only), ``"valid"`` or ``"test"``.
        writer: the output.
        modality: one of :data:`MODALITIES`.
        slice_range: ``(start, stop)`` axial slice indices (inferior -> superior), stop excluded.
        min_brain_fraction: skip slices whose brain (voxels > 0) covers less than this share of the slice.
        percentiles: brain-voxel percentiles mapped to 0 and 255.

    Raises:
        FileNotFoundError / ValueError: naming the file (missing modality or segmentation, not 3D, shapes
            that differ, slice range outside the volume, no brain voxel).
    """
    patient = os.path.basename(os.path.normpath(patient_dir))
    image_path, seg_path = patient_files(patient_dir, modality)
    volume = load_volume(image_path)
    seg = load_volume(seg_path, integer=True)
    brain = volume > 0
    if not brain.any():
        raise ValueError(f"{image_path} has no brain voxel (no value > 0)")
    scaled = percentile_to_uint8(volume, *percentiles, where=brain)
    for k, image, label in iter_axial_slices(scaled, seg, slice_range, image_path):
        if np.take(brain, k, axis=SLICE_AXIS).mean() < min_brain_fraction:
            continue
        anomalous = bool((label > 0).any())
        if split == "train" and anomalous:
            continue
        writer.write(split, UNGOOD if anomalous else GOOD, f"{patient}_slice{k:03d}", image, label > 0)


def convert_brats(
    input_dir: str,
    output_dir: str,
    modality: str = "flair",
    slice_range: Sequence[int] = (60, 100),
    min_brain_fraction: float = 0.05,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Counter[str]:
    """Convert a BraTS2021 release to the BMAD layout (see the module docstring).

    Args:
        input_dir: folder of the ``BraTS2021_XXXXX/`` patient folders.
        output_dir: new (or empty) output folder.
        modality: ``flair``, ``t1``, ``t1ce`` or ``t2``.
        slice_range: ``(start, stop)`` axial slices kept, stop excluded.
        min_brain_fraction: minimum share of brain pixels of a kept slice.
        valid_fraction: share of patients in ``valid/``.
        test_fraction: share of patients in ``test/``.
        seed: seed of the patient split.

    Returns:
        Written images per ``"<split>/<class>"``.
    """
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}: choose one of {', '.join(MODALITIES)}")
    if not 0.0 <= min_brain_fraction < 1.0:
        raise ValueError(f"min_brain_fraction must be in [0, 1), got {min_brain_fraction}")
    patients = find_patients(input_dir)
    for patient in patients:  # fail on a missing or mismatched file before writing anything
        patient_files(os.path.join(input_dir, patient), modality, slice_range)
    assignment = split_ids(patients, {"valid": valid_fraction, "test": test_fraction}, seed, rest="train")
    prepare_output_dir(output_dir)
    writer = BmadWriter(output_dir, with_masks=True)
    for patient in patients:
        logger.debug(f"{patient} -> {assignment[patient]}")
        convert_patient(
            os.path.join(input_dir, patient), assignment[patient], writer, modality, slice_range, min_brain_fraction
        )
    logger.info(f"{len(patients)} patients from {input_dir} -> {output_dir}: {dict(sorted(writer.counts.items()))}")
    return writer.counts


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m data_prep.brats --input_dir IN --output_dir OUT [options]``."""
    parser = argparse.ArgumentParser(prog="data_prep.brats", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input_dir", required=True, help="folder of BraTS2021_XXXXX/ patient folders")
    parser.add_argument("--output_dir", required=True, help="new or empty folder for the BMAD layout")
    parser.add_argument("--modality", choices=MODALITIES, default="flair", help="(default: %(default)s)")
    parser.add_argument(
        "--slice_range", type=int, nargs=2, default=[60, 100], metavar=("START", "STOP"), help="stop excluded"
    )
    parser.add_argument("--min_brain_fraction", type=float, default=0.05, help="(default: %(default)s)")
    add_split_arguments(parser, valid_fraction=0.1, test_fraction=0.2)
    args = parser.parse_args(argv)
    return run_converter(
        parser.prog,
        lambda: convert_brats(
            args.input_dir,
            args.output_dir,
            modality=args.modality,
            slice_range=args.slice_range,
            min_brain_fraction=args.min_brain_fraction,
            valid_fraction=args.valid_fraction,
            test_fraction=args.test_fraction,
            seed=args.seed,
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
