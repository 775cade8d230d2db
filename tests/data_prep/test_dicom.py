"""data_prep.dicom: cases of a CT series and its DICOM SEG -> the volumes layout, labels on the right slices."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("itk")
hd = pytest.importorskip("highdicom")

import pydicom  # noqa: E402
from pydicom.sr.codedict import codes  # noqa: E402

from data_prep.dicom import main, parse_labels  # noqa: E402
from data_prep.validate import validate_folder  # noqa: E402
from multiad_monai.data.layouts import index_dataset  # noqa: E402
from tests.dicom import ct_volume, series_affine, write_series  # noqa: E402

SHAPE = (6, 20, 24)  # slices, rows, columns


def _masks() -> np.ndarray:
    """(slices, rows, columns, 2): liver on slices 1-4, tumour inside it on slice 2."""
    masks = np.zeros((*SHAPE, 2), dtype=bool)
    masks[1:5, 4:16, 5:18, 0] = True
    masks[2, 8:11, 9:12, 1] = True
    return masks


def _write_seg(case: str, files: list[str], masks: np.ndarray, names=("Liver", "Tumour"), references=True) -> None:
    sources = [pydicom.dcmread(f) for f in files]
    algorithm = hd.AlgorithmIdentificationSequence(
        name="manual", family=codes.cid7162.ArtificialIntelligence, version="1"
    )
    segments = [
        hd.seg.SegmentDescription(
            segment_number=n + 1,
            segment_label=name,
            segmented_property_category=codes.SCT.Organ,
            segmented_property_type=codes.SCT.Liver,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL if n else "MANUAL",
            algorithm_identification=None if n else algorithm,
        )
        for n, name in enumerate(names)
    ]
    seg = hd.seg.Segmentation(
        sources, masks[..., : len(names)], "BINARY", segments, hd.UID(), 300, hd.UID(), 1, "rater", "manual", "1", "0"
    )
    if not references:  # some exporters keep only each frame's plane position
        for frame in seg.PerFrameFunctionalGroupsSequence:
            frame.pop("DerivationImageSequence", None)
        seg.pop("ReferencedSeriesSequence", None)
        seg.pop("SourceImageSequence", None)
    seg.save_as(os.path.join(case, "roi_seg.dcm"))


@pytest.fixture
def cases(tmp_path) -> str:
    root = tmp_path / "cases"
    for i in range(4):
        files = write_series(str(root / f"patient{i}" / "CT"), ct_volume(SHAPE, seed=i), series_number=2)
        if i < 2:
            _write_seg(str(root / f"patient{i}"), files, _masks(), references=i == 0)
    return str(root)


def test_series_and_seg_become_a_volumes_layout(cases, tmp_path):
    out = str(tmp_path / "out")
    assert (
        main(["--input_dir", cases, "--output_dir", out, "--labels", "liver=1,tumour=2", "--test_fraction", "0.5"]) == 0
    )
    layout, splits = index_dataset(out)
    assert layout == "volumes" and len(splits["train"]) == len(splits["test"]) == 2
    expected = np.zeros(SHAPE, dtype=np.uint8)
    expected[_masks()[..., 0]] = 1
    expected[_masks()[..., 1]] = 2
    affine = series_affine((-20.0, -30.0, 10.0), (1, 0, 0, 0, 1, 0), (0.8, 0.7), 2.5)
    for item in splits["train"] + splits["test"]:
        case = os.path.basename(item["image"])[: -len(".nii.gz")]
        image, label = nib.load(item["image"]), nib.load(item["mask"])
        np.testing.assert_allclose(image.affine, affine, atol=1e-4)
        np.testing.assert_allclose(label.affine, affine, atol=1e-4)
        hu = ct_volume(SHAPE, seed=int(case[-1])).astype(float) - 1024
        np.testing.assert_allclose(image.get_fdata(), hu.transpose(2, 1, 0))
        # patient0's SEG references its slices, patient1's only gives plane positions: the same label
        want = expected if case in ("patient0", "patient1") else np.zeros(SHAPE, dtype=np.uint8)
        np.testing.assert_array_equal(np.asarray(label.dataobj), want.transpose(2, 1, 0))
    report = validate_folder(out)
    assert report.ok, report.format()


def test_default_labels_mark_every_segment_as_lesion(cases, tmp_path):
    out = str(tmp_path / "out")
    assert main(["--input_dir", cases, "--output_dir", out, "--test_fraction", "0"]) == 0
    label = np.asarray(nib.load(os.path.join(out, "labelsTr", "patient0.nii.gz")).dataobj)
    assert set(np.unique(label)) == {0, 1} and label.sum() == _masks()[..., 0].sum()


def test_unknown_segment_and_foreign_seg_are_named(cases, tmp_path, capsys):
    assert main(["--input_dir", cases, "--output_dir", str(tmp_path / "a"), "--labels", "liver=1"]) == 2
    assert "segment 'Tumour' has no label value in --labels {'liver': 1}" in capsys.readouterr().err
    other = write_series(str(tmp_path / "other"), ct_volume(SHAPE, seed=9), series_number=7)
    _write_seg(os.path.join(cases, "patient2"), other, _masks())
    assert main(["--input_dir", cases, "--output_dir", str(tmp_path / "b")]) == 2
    assert "roi_seg.dcm references series" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["liver", "liver=0", "liver=x", "=1"])
def test_bad_labels_say_the_form(text):
    with pytest.raises(ValueError, match="expected NAME=VALUE pairs"):
        parse_labels(text)
