from __future__ import annotations

import os
import re
import shutil
from collections import Counter

import nibabel as nib
import numpy as np
import pytest

from data_prep.brats import convert_brats, find_patients, main
from data_prep.common import percentile_to_uint8, split_ids
from multiad_monai.transforms import SLICE_AXIS, VolumeToSlices, load_volume_for_slicing
from tests.data_prep.conftest import (
    BRATS_OPTIONS,
    BRATS_SHAPE,
    BRATS_SLICE_RANGE,
    brats_affine,
    list_pngs,
    read_png,
    save_nifti,
)
from tests.nifti import STORAGES, store_as

NAME = re.compile(r"^(BraTS2021_\d{5})_slice(\d{3})\.png$")


def _raw(raw: str, patient: str, kind: str) -> np.ndarray:
    return np.asanyarray(nib.load(f"{raw}/{patient}/{patient}_{kind}.nii.gz").dataobj)


def expected_counts(raw: str, slice_range, min_brain_fraction: float, assignment: dict[str, str]) -> Counter:
    """Count the slices the converter must write, from the raw volumes."""
    counts = Counter()
    for patient, split in assignment.items():
        brain, seg = _raw(raw, patient, "flair") > 0, _raw(raw, patient, "seg")
        for k in range(*slice_range):
            if brain[:, :, k].mean() < min_brain_fraction:
                continue
            anomalous = bool(seg[:, :, k].any())
            if not (split == "train" and anomalous):
                counts[f"{split}/{'Ungood' if anomalous else 'good'}"] += 1
    return counts


def written(out: str) -> Counter:
    counts = Counter({"train/good": len(list_pngs(f"{out}/train/good"))})
    for split in ("valid", "test"):
        for cls in ("good", "Ungood"):
            counts[f"{split}/{cls}"] = len(list_pngs(f"{out}/{split}/{cls}/img"))
    return +counts


def patients_by_split(out: str) -> dict[str, set[str]]:
    folders = {"train": ["train/good"], "valid": ["valid/good/img", "valid/Ungood/img"]}
    folders["test"] = ["test/good/img", "test/Ungood/img"]
    return {s: {NAME.match(f).group(1) for d in ds for f in list_pngs(f"{out}/{d}")} for s, ds in folders.items()}


def test_layout_counts_and_names(brats_raw, brats_out):
    patients = find_patients(brats_raw)
    assignment = split_ids(patients, {"valid": 0.2, "test": 0.2}, seed=0)
    assert written(brats_out) == expected_counts(brats_raw, BRATS_SLICE_RANGE, 0.05, assignment)
    for split in ("valid", "test"):
        for cls in ("good", "Ungood"):
            assert list_pngs(f"{brats_out}/{split}/{cls}/img") == list_pngs(f"{brats_out}/{split}/{cls}/label")
    for folder, _, files in os.walk(brats_out):
        assert all(NAME.match(f) for f in files), folder


def test_patient_wise_split_is_disjoint_and_seeded(brats_raw, brats_out):
    by_split = patients_by_split(brats_out)
    assert by_split["train"].isdisjoint(by_split["valid"]) and by_split["train"].isdisjoint(by_split["test"])
    assert by_split["valid"].isdisjoint(by_split["test"])
    assert (len(by_split["valid"]), len(by_split["test"])) == (1, 1)
    expected = split_ids(find_patients(brats_raw), {"valid": 0.2, "test": 0.2}, seed=0)
    assert all(expected[p] == split for split, ps in by_split.items() for p in ps)


@pytest.mark.parametrize("split", ["valid", "test"])
@pytest.mark.parametrize("cls", ["good", "Ungood"])
def test_masks_binary_same_size_and_match_tumour(brats_raw, brats_out, split, cls):
    names = list_pngs(f"{brats_out}/{split}/{cls}/img")
    assert names
    for name in names:
        image = read_png(f"{brats_out}/{split}/{cls}/img/{name}")
        mask = read_png(f"{brats_out}/{split}/{cls}/label/{name}")
        assert mask.shape == image.shape == BRATS_SHAPE[:2]
        assert set(np.unique(mask)) <= {0, 255}
        patient, k = NAME.match(name).groups()
        tumour = _raw(brats_raw, patient, "seg")[:, :, int(k)] > 0
        assert (mask > 0).sum() == tumour.sum() and (cls == "Ungood") == bool(tumour.any())


def test_intensities_scaled_per_volume(brats_raw, brats_out):
    for name in list_pngs(f"{brats_out}/train/good"):
        patient, k = NAME.match(name).groups()
        image = read_png(f"{brats_out}/train/good/{name}")
        brain = _raw(brats_raw, patient, "flair")[:, :, int(k)] > 0
        # background black; brain from the 0.5th percentile up visible
        assert 0.98 * brain.sum() <= (image > 0).sum() <= brain.sum()
        assert 100 <= image.max() < 255  # normal tissue: mid-grey; the bright tumour takes the top of the range
    tumour_slices = [read_png(f"{brats_out}/test/Ungood/img/{f}") for f in list_pngs(f"{brats_out}/test/Ungood/img")]
    assert max(image.max() for image in tumour_slices) == 255


@pytest.mark.parametrize(
    "slice_range, min_brain_fraction",
    [
        ((4, 16), 0.05),
        ((0, 20), 0.05),  # includes the (almost) brain-free end slices: some are skipped
        ((0, 20), 0.0),
        ((8, 12), 0.5),
    ],
)
def test_slice_range_and_min_brain_fraction(brats_raw, tmp_path, slice_range, min_brain_fraction):
    out = str(tmp_path / "out")
    options = dict(BRATS_OPTIONS, slice_range=slice_range, min_brain_fraction=min_brain_fraction)
    counts = convert_brats(brats_raw, out, **options)
    assignment = split_ids(find_patients(brats_raw), {"valid": 0.2, "test": 0.2}, seed=0)
    assert counts == written(out) == expected_counts(brats_raw, slice_range, min_brain_fraction, assignment)
    indices = {int(NAME.match(f).group(2)) for _, _, files in os.walk(out) for f in files}
    assert indices and min(indices) >= slice_range[0] and max(indices) < slice_range[1]


def test_modality_option_reads_that_file(brats_raw, brats_out, tmp_path):
    out = str(tmp_path / "t2")
    convert_brats(brats_raw, out, modality="t2", **BRATS_OPTIONS)
    assert written(out) == written(brats_out)
    name = list_pngs(f"{out}/train/good")[0]
    assert not np.array_equal(read_png(f"{out}/train/good/{name}"), read_png(f"{brats_out}/train/good/{name}"))


def _remove(raw: str, file: str) -> None:
    os.remove(f"{raw}/BraTS2021_00004/{file}")


def _other_shape(raw: str, file: str) -> None:
    save_nifti(f"{raw}/BraTS2021_00004/{file}", np.zeros((32, 30, 20), dtype=np.uint8), brats_affine())


def _four_d(raw: str, file: str) -> None:
    save_nifti(f"{raw}/BraTS2021_00004/{file}", np.ones((32, 32, 20, 2), dtype=np.int16), brats_affine())


def _empty(raw: str, file: str) -> None:
    shutil.rmtree(raw)
    os.makedirs(raw)


@pytest.mark.parametrize(
    "break_input, file, options, error, match",
    [
        (_remove, "BraTS2021_00004_flair.nii.gz", {}, FileNotFoundError, "BraTS2021_00004_flair.nii.gz"),
        (_remove, "BraTS2021_00004_t1ce.nii.gz", {"modality": "t1ce"}, FileNotFoundError, "00004_t1ce.nii.gz"),
        (_remove, "BraTS2021_00004_seg.nii.gz", {}, FileNotFoundError, "missing segmentation.*00004_seg.nii.gz"),
        (_other_shape, "BraTS2021_00004_seg.nii.gz", {}, ValueError, r"00004_seg.nii.gz has shape \(32, 30, 20\)"),
        (_four_d, "BraTS2021_00004_flair.nii.gz", {}, ValueError, "00004_flair.nii.gz is not a 3D volume"),
        (_empty, "", {}, ValueError, "no patient folder .* in .*BraTS2021_Training_Data"),
        (None, "", {"slice_range": (60, 100)}, ValueError, r"slice range \[60, 100\) is outside .*_flair.nii.gz"),
        (None, "", {"modality": "dwi"}, ValueError, "unknown modality 'dwi'"),
    ],
)
def test_bad_input_fails_early_naming_the_file(brats_raw, tmp_path, break_input, file, options, error, match):
    raw = str(tmp_path / "BraTS2021_Training_Data")
    shutil.copytree(brats_raw, raw)
    if break_input:
        break_input(raw, file)
    out = str(tmp_path / "out")
    with pytest.raises(error, match=match):
        convert_brats(raw, out, **{**BRATS_OPTIONS, **options})
    assert not os.path.exists(out)  # found before writing anything


def test_missing_input_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        convert_brats(str(tmp_path / "nowhere"), str(tmp_path / "out"))


def test_cli(brats_raw, tmp_path, capsys):
    out = str(tmp_path / "out")
    args = ["--input_dir", brats_raw, "--output_dir", out, "--slice_range", "4", "16"]
    assert main(args + ["--valid_fraction", "0.2", "--test_fraction", "0.2", "--seed", "0"]) == 0
    assert "train/good: " in capsys.readouterr().out and list_pngs(f"{out}/test/Ungood/img")
    assert main(args) == 2  # the output folder now exists
    assert "is not empty" in capsys.readouterr().err


def _all_pngs(out: str) -> dict[str, np.ndarray]:
    return {
        os.path.relpath(os.path.join(folder, f), out): read_png(os.path.join(folder, f))
        for folder, _, files in os.walk(out)
        for f in files
    }


@pytest.mark.parametrize("name, order, flip", [s for s in STORAGES if s[0] in ("RAS", "ARI", "ILP")])
def test_storage_does_not_change_the_output(brats_raw, brats_out, tmp_path, name, order, flip):
    """The same patients stored RAS, superior-first or slice-axis-first give the very same PNGs and masks."""
    raw = str(tmp_path / "raw")
    for patient in find_patients(brats_raw):
        for file in os.listdir(f"{brats_raw}/{patient}"):
            lps = nib.load(f"{brats_raw}/{patient}/{file}")
            ras, affine = store_as(np.asanyarray(lps.dataobj), lps.affine, (0, 1, 2), (True, True, False))
            save_nifti(f"{raw}/{patient}/{file}", *store_as(ras, affine, order, flip))
    convert_brats(raw, str(tmp_path / "out"), **BRATS_OPTIONS)
    restored, reference = _all_pngs(str(tmp_path / "out")), _all_pngs(brats_out)
    assert sorted(restored) == sorted(reference)
    assert all(np.array_equal(restored[f], reference[f]) for f in reference)


def test_png_is_the_package_slice_after_the_same_scaling(brats_raw, brats_out):
    """A prepared slice equals the package's slice of the NIfTI, after the converter's percentile scaling."""
    for name in list_pngs(f"{brats_out}/train/good"):
        patient, k = NAME.match(name).groups()
        volume = load_volume_for_slicing(f"{brats_raw}/{patient}/{patient}_flair.nii.gz")[0].numpy()
        scaled = percentile_to_uint8(volume, where=volume > 0)[None]
        package_slice = VolumeToSlices(SLICE_AXIS, (int(k), int(k) + 1))(scaled)[0][0].numpy()
        assert np.array_equal(read_png(f"{brats_out}/train/good/{name}"), package_slice)
