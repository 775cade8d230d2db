from __future__ import annotations

import logging
import os
import re
import shutil
from collections import Counter

import nibabel as nib
import numpy as np
import pytest

from data_prep.common import scale_to_uint8, split_ids
from data_prep.liver import convert_liver, main
from tests.data_prep.conftest import (
    CT_SHAPE,
    LIVER_HU,
    LIVER_OPTIONS,
    TUMOR_HU,
    ct_affine,
    list_pngs,
    read_png,
    save_nifti,
    write_btcv,
)

NAME = re.compile(r"^((?:img\d{4})|(?:volume-\d+))_slice(\d{3})\.png$")
CLASS_FOLDERS = {
    "train/good": "train/good",
    "valid/good": "valid/good/img",
    "valid/Ungood": "valid/Ungood/img",
    "test/good": "test/good/img",
    "test/Ungood": "test/Ungood/img",
}


def raw_label(lits: str, btcv: str, volume: str) -> np.ndarray:
    path = (
        f"{btcv}/label/label{volume[3:]}.nii.gz"
        if volume.startswith("img")
        else f"{lits}/segmentation-{volume[7:]}.nii"
    )
    return np.asanyarray(nib.load(path).dataobj)


def expected_counts(lits: str, btcv: str, min_liver_pixels: int, valid_fraction: float = 0.2) -> Counter:
    counts = Counter()
    for f in sorted(os.listdir(f"{btcv}/img")):
        label = raw_label(lits, btcv, f[:7])
        counts["train/good"] += sum(int((label[:, :, k] == 6).sum() >= min_liver_pixels) for k in range(CT_SHAPE[2]))
    volumes = [f[:-4] for f in os.listdir(lits) if f.startswith("volume-")]
    assignment = split_ids(volumes, {"valid": valid_fraction}, seed=0, rest="test")
    for volume, split in assignment.items():
        label = raw_label(lits, btcv, volume)
        for k in range(CT_SHAPE[2]):
            if (label[:, :, k] > 0).sum() >= min_liver_pixels:
                counts[f"{split}/{'Ungood' if (label[:, :, k] == 2).any() else 'good'}"] += 1
    return counts


def written(out: str) -> Counter:
    return +Counter({key: len(list_pngs(f"{out}/{folder}")) for key, folder in CLASS_FOLDERS.items()})


def test_layout_and_counts(lits_raw, btcv_raw, liver_out):
    counts = written(liver_out)
    assert counts == expected_counts(lits_raw, btcv_raw, 100)
    assert set(counts) == set(CLASS_FOLDERS)  # every class is represented
    for key, folder in CLASS_FOLDERS.items():
        if key != "train/good":
            assert list_pngs(f"{liver_out}/{folder}") == list_pngs(f"{liver_out}/{folder[:-3]}label")


def test_btcv_trains_lits_evaluates_split_by_volume(liver_out):
    volumes = {key: {NAME.match(f).group(1) for f in list_pngs(f"{liver_out}/{d}")} for key, d in CLASS_FOLDERS.items()}
    assert all(v.startswith("img") for v in volumes["train/good"])
    valid, test = volumes["valid/good"] | volumes["valid/Ungood"], volumes["test/good"] | volumes["test/Ungood"]
    assert all(v.startswith("volume-") for v in valid | test)
    assert valid.isdisjoint(test) and len(valid) == 1 and len(test) == 4


@pytest.mark.parametrize(
    "window, liver_value, tumor_value",
    [
        ((-200.0, 250.0), 170, 130),
        ((-160.0, 240.0), 166, 121),
    ],
)
def test_hu_window_and_liver_masking(lits_raw, btcv_raw, tmp_path, window, liver_value, tumor_value):
    """Inside the liver: the windowed HU; outside (body at 40 HU, other organs, air): 0."""
    assert scale_to_uint8(np.array([LIVER_HU, TUMOR_HU]), *window).tolist() == [liver_value, tumor_value]
    out = str(tmp_path / "out")
    convert_liver(lits_raw, btcv_raw, out, window=window, **LIVER_OPTIONS)
    for folder in CLASS_FOLDERS.values():
        for name in list_pngs(f"{out}/{folder}"):
            image = read_png(f"{out}/{folder}/{name}")
            volume, k = NAME.match(name).groups()
            label = raw_label(lits_raw, btcv_raw, volume)[:, :, int(k)]
            btcv = volume.startswith("img")
            liver, tumor = (label == 6, np.zeros_like(label, bool)) if btcv else (label == 1, label == 2)
            assert image.shape == CT_SHAPE[:2]
            assert (image == liver_value).sum() == liver.sum() and (image == tumor_value).sum() == tumor.sum()
            assert (image == 0).sum() == image.size - liver.sum() - tumor.sum()


@pytest.mark.parametrize("split", ["valid", "test"])
@pytest.mark.parametrize("cls", ["good", "Ungood"])
def test_masks_binary_same_size_and_are_the_tumour(lits_raw, btcv_raw, liver_out, split, cls):
    for name in list_pngs(f"{liver_out}/{split}/{cls}/img"):
        image = read_png(f"{liver_out}/{split}/{cls}/img/{name}")
        mask = read_png(f"{liver_out}/{split}/{cls}/label/{name}")
        assert mask.shape == image.shape and set(np.unique(mask)) <= {0, 255}
        volume, k = NAME.match(name).groups()
        tumor = raw_label(lits_raw, btcv_raw, volume)[:, :, int(k)] == 2
        assert (mask > 0).sum() == tumor.sum() and (cls == "Ungood") == bool(tumor.any())
        assert np.all(image[mask > 0] > 0)  # the tumour is inside the kept (liver) region


@pytest.mark.parametrize("min_liver_pixels", [1, 100, 180])
def test_min_liver_pixels(lits_raw, btcv_raw, tmp_path, min_liver_pixels):
    out = str(tmp_path / "out")
    counts = convert_liver(lits_raw, btcv_raw, out, min_liver_pixels=min_liver_pixels, **LIVER_OPTIONS)
    assert counts == written(out) == expected_counts(lits_raw, btcv_raw, min_liver_pixels)
    assert sum(counts.values()) > 0


def test_warns_when_ct_is_not_in_hu(lits_raw, tmp_path, caplog):
    btcv = write_btcv(str(tmp_path / "BTCV"), n_volumes=1, hu=False)
    with caplog.at_level(logging.WARNING, logger="data_prep.liver"):
        convert_liver(lits_raw, btcv, str(tmp_path / "out"), **LIVER_OPTIONS)
    # only data_prep's own warnings (MONAI logs its optional DICOM plugins when pydicom is installed)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "data_prep.liver"]
    assert len(warnings) == 1 and "img0001.nii.gz" in warnings[0] and "Hounsfield" in warnings[0]


def test_wrong_liver_label_warns(lits_raw, btcv_raw, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="data_prep.liver"):
        counts = convert_liver(lits_raw, btcv_raw, str(tmp_path / "out"), btcv_liver_label=5, **LIVER_OPTIONS)
    assert "train/good" not in counts
    assert "label0001.nii.gz has no voxel labelled [5]" in caplog.text


def _remove(lits: str, btcv: str, file: str) -> None:
    os.remove(os.path.join(lits if file.startswith(("volume", "segm")) else btcv, file))


def _other_shape(lits: str, btcv: str, file: str) -> None:
    save_nifti(f"{lits}/{file}", np.zeros((32, 32, 10), dtype=np.uint8), ct_affine(flip=False))


def _two_d(lits: str, btcv: str, file: str) -> None:
    save_nifti(f"{lits}/{file}", np.zeros((32, 32), dtype=np.int16), ct_affine(flip=False))


def _empty(lits: str, btcv: str, file: str) -> None:
    for f in os.listdir(lits):
        os.remove(f"{lits}/{f}")


def _no_btcv_images(lits: str, btcv: str, file: str) -> None:
    shutil.rmtree(f"{btcv}/img")


@pytest.mark.parametrize(
    "break_input, file, error, match",
    [
        (_remove, "segmentation-3.nii", FileNotFoundError, "missing segmentation of .*volume-3.nii: .*segmentation-3"),
        (_remove, "label/label0002.nii.gz", FileNotFoundError, "missing label of .*img0002.nii.gz"),
        (_other_shape, "segmentation-1.nii", ValueError, r"segmentation-1.nii has shape \(32, 32, 10\) but its image"),
        (_two_d, "volume-2.nii", ValueError, r"volume-2.nii is not a 3D volume \(shape \(32, 32\)\)"),
        (_empty, "", ValueError, r"no LiTS volume \(volume-\*.nii\[.gz\]\) in .*LiTS"),
        (_no_btcv_images, "", FileNotFoundError, "BTCV image folder .*BTCV/img does not exist"),
    ],
)
def test_bad_input_fails_early_naming_the_file(lits_raw, btcv_raw, tmp_path, break_input, file, error, match):
    lits, btcv = str(tmp_path / "LiTS"), str(tmp_path / "BTCV")
    shutil.copytree(lits_raw, lits)
    shutil.copytree(btcv_raw, btcv)
    break_input(lits, btcv, file)
    out = str(tmp_path / "out")
    with pytest.raises(error, match=match):
        convert_liver(lits, btcv, out, **LIVER_OPTIONS)
    assert not os.path.exists(out)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"window": (250.0, -200.0)}, "low < high"),
        ({"valid_fraction": 1.0}, r"in \[0, 1\)"),
    ],
)
def test_bad_options(lits_raw, btcv_raw, tmp_path, options, match):
    with pytest.raises(ValueError, match=match):
        convert_liver(lits_raw, btcv_raw, str(tmp_path / "out"), **options)


def test_cli(lits_raw, btcv_raw, tmp_path, capsys):
    out = str(tmp_path / "out")
    args = ["--lits_dir", lits_raw, "--btcv_dir", btcv_raw, "--output_dir", out, "--window", "-200", "250"]
    assert main(args + ["--min_liver_pixels", "100", "--valid_fraction", "0.2", "--lits_tumor_label", "2"]) == 0
    assert "test/Ungood: " in capsys.readouterr().out
    assert main(["--lits_dir", str(tmp_path / "none"), "--btcv_dir", btcv_raw, "--output_dir", out + "2"]) == 2
    assert "none does not exist" in capsys.readouterr().err
