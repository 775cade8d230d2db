"""DICOM series with their DICOM SEG labels to the ``volumes`` layout (NIfTI), for the liver and brain bundles.

Departments export manual ROIs as DICOM SEG objects next to the CT or MR. Input: one folder per case, holding
one image series (slices with or without ``.dcm``, or a multi-frame file; read and checked as everywhere else,
see :mod:`multiad_monai.transforms.dicom`) and the SEG objects that reference it (none: a normal case, empty
label). Output::

    <output_dir>/imagesTr/<case>.nii.gz   the series in its own geometry (HU for CT), labelsTr/<case>.nii.gz
    <output_dir>/imagesTs/<case>.nii.gz   cases drawn by --test_fraction, labelsTs/<case>.nii.gz

Each SEG frame is put on the slice whose SOP instance it references (its Derivation Image Sequence) or, for a
SEG without references, on the slice at its plane position (within half the slice spacing); a frame that
matches no slice is an error naming the SEG. Segments become label values by their names: ``--labels
"liver=1,tumour=2"`` gives the liver bundle's numbering (organ 1, lesion 2); without ``--labels`` every segment
is 1 (a brain lesion). Overlapping segments keep the larger value.

Usage::

    python -m data_prep.dicom --input_dir CASES --output_dir data/liver_dicom --labels "liver=1,tumour=2"
    python -m data_prep.validate data/liver_dicom
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence

import nibabel as nib
import numpy as np
from monai.transforms import LoadImage

from data_prep.common import prepare_output_dir, require_dir, run_converter, split_ids
from multiad_monai.transforms.dicom import (
    SEG_CLASS,
    DicomSeries,
    find_series,
    is_dicom_file,
    register_dicom_reader,
    require_dicom_extra,
    segmentation_label,
)

__all__ = ["case_series", "convert_dicom", "main", "parse_labels"]

logger = logging.getLogger(__name__)


def parse_labels(text: str | None) -> dict[str, int] | None:
    """``"liver=1,tumour=2"`` -> ``{"liver": 1, "tumour": 2}`` (names compared case-insensitively); ``None`` stays."""
    if not text:
        return None
    mapping = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if not name.strip() or not value.strip().isdigit() or not 0 < int(value) < 256:
            raise ValueError(f"--labels {text!r}: expected NAME=VALUE pairs with values 1-255, e.g. 'liver=1,tumour=2'")
        mapping[name.strip().casefold()] = int(value)
    return mapping


def case_series(case_dir: str) -> tuple[DicomSeries, list[str]]:
    """The one image series of a case folder and the SEG files in it.

    Raises:
        DicomSeriesError / ValueError: naming the case when it holds no series, several, or a broken one.
    """
    series = find_series(case_dir)
    if len(series) != 1:
        names = ", ".join(s.label for s in series)
        raise ValueError(f"case {case_dir} holds {len(series)} image series ({names}): keep one series per case folder")
    import pydicom

    files = [os.path.join(d, f) for d, _, names in os.walk(case_dir) for f in sorted(names)]
    segs = [
        f
        for f in files
        if is_dicom_file(f) and str(pydicom.dcmread(f, stop_before_pixels=True).get("SOPClassUID", "")) == SEG_CLASS
    ]
    return series[0], segs


def convert_dicom(
    input_dir: str, output_dir: str, labels: Mapping[str, int] | None = None, test_fraction: float = 0.3, seed: int = 0
) -> dict[str, int]:
    """Convert every case folder of ``input_dir``; returns the number of volumes per ``"<split>/images"``."""
    require_dicom_extra("data_prep.dicom")
    cases = sorted(
        c for c in os.listdir(require_dir(input_dir, "DICOM input")) if os.path.isdir(os.path.join(input_dir, c))
    )
    if not cases:
        raise ValueError(f"no case folders in {input_dir}: expected one folder per case with its series and SEGs")
    prepare_output_dir(output_dir)
    splits = split_ids(cases, {"test": test_fraction}, seed=seed)
    loader = LoadImage(image_only=True)
    register_dicom_reader(loader)
    counts = {"train/images": 0, "test/images": 0}
    for case in cases:
        series, segs = case_series(os.path.join(input_dir, case))
        volume = loader(series.files)
        label = np.zeros(volume.shape, dtype=np.uint8)
        for seg in segs:
            label = np.maximum(label, segmentation_label(seg, series, volume.shape, labels))
        suffix = "Ts" if splits[case] == "test" else "Tr"
        affine = volume.affine.numpy()
        for folder, array in ((f"images{suffix}", volume.numpy()), (f"labels{suffix}", label)):
            os.makedirs(os.path.join(output_dir, folder), exist_ok=True)
            nib.save(nib.Nifti1Image(array, affine), os.path.join(output_dir, folder, f"{case}.nii.gz"))
        logger.info(f"{case}: {series.label}, {len(segs)} SEG, label values {sorted(set(np.unique(label)) - {0})}")
        counts[f"{splits[case]}/images"] += 1
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="data_prep.dicom", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input_dir", required=True, help="one folder per case: its image series and DICOM SEGs")
    parser.add_argument("--output_dir", required=True, help="the volumes-layout folder to write (new or empty)")
    parser.add_argument("--labels", default=None, help="segment names to label values, e.g. 'liver=1,tumour=2'")
    parser.add_argument("--test_fraction", type=float, default=0.3, help="share of cases in imagesTs (%(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the case-wise split (default: %(default)s)")
    args = parser.parse_args(argv)
    return run_converter(
        parser.prog,
        lambda: convert_dicom(
            args.input_dir, args.output_dir, parse_labels(args.labels), args.test_fraction, args.seed
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
