from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from data_prep.common import split_ids
from data_prep.oct import convert_oct2017, convert_resc, main, oct2017_patient
from tests.data_prep.conftest import OCT2017_OPTIONS, OCT_PATIENTS, list_pngs, read_png


def _patient_ids(names: list[str]) -> set[str]:
    return {name.split("-")[1] for name in names}


# ----------------------------------------------------------------------------------------------- OCT2017
@pytest.mark.parametrize(
    "path, patient",
    [
        ("CNV-1016042-1.jpeg", "1016042"),
        ("/data/OCT2017/test/DRUSEN/DRUSEN-9894035-2.jpeg", "9894035"),
        ("NORMAL-4191000-12.jpg", "4191000"),
    ],
)
def test_oct2017_patient(path, patient):
    assert oct2017_patient(path) == patient


@pytest.mark.parametrize("name", ["CNV_1016042_1.jpeg", "CNV--1.jpeg", "scan.jpeg"])
def test_oct2017_patient_rejects_other_names(name):
    with pytest.raises(ValueError, match=f"{name}: OCT2017 file names must read CLASS-PATIENT-N"):
        oct2017_patient(name)


@pytest.mark.parametrize(
    "folder, expected_classes",
    [
        ("train/good", ["NORMAL"]),  # the abnormal training images are left out
        ("valid/good/img", ["NORMAL"]),
        ("test/good/img", ["NORMAL"]),
        ("valid/Ungood/img", ["CNV", "DME", "DRUSEN"]),
        ("test/Ungood/img", ["CNV", "DME", "DRUSEN"]),
    ],
)
def test_oct2017_layout(oct2017_out, folder, expected_classes):
    names = list_pngs(f"{oct2017_out}/{folder}")
    assert names and {n.split("-")[0] for n in names} <= set(expected_classes)
    assert not os.path.exists(f"{oct2017_out}/{os.path.dirname(folder)}/label")  # image-level labels only


@pytest.mark.parametrize(
    "split, cls, count",
    [
        ("train", "good", 3 * 2),
        ("valid+test", "good", 4 * 2),
        ("valid+test", "Ungood", (3 + 2 + 2) * 2),
    ],
)
def test_oct2017_counts(oct2017_out, split, cls, count):
    folders = ["train/good"] if split == "train" else [f"valid/{cls}/img", f"test/{cls}/img"]
    assert sum(len(list_pngs(f"{oct2017_out}/{f}")) for f in folders) == count


def test_oct2017_valid_split_by_patient(oct2017_out):
    valid = _patient_ids(list_pngs(f"{oct2017_out}/valid/good/img") + list_pngs(f"{oct2017_out}/valid/Ungood/img"))
    test = _patient_ids(list_pngs(f"{oct2017_out}/test/good/img") + list_pngs(f"{oct2017_out}/test/Ungood/img"))
    test_patients = {p for patients in OCT_PATIENTS["test"].values() for p in patients}
    assert valid.isdisjoint(test) and valid | test == test_patients
    assert len(valid) == round(0.3 * len(test_patients))
    assignment = split_ids(test_patients, {"valid": 0.3}, seed=0, rest="test")
    assert valid == {p for p, s in assignment.items() if s == "valid"}
    # patient 5300000 has CNV and DME images: all in one split
    where = {s for s, f in (("valid", valid), ("test", test)) if "5300000" in f}
    assert len(where) == 1


def test_oct2017_images_grey_at_original_size(oct2017_raw, oct2017_out):
    for folder in ("train/good", "test/Ungood/img", "valid/Ungood/img"):
        for name in list_pngs(f"{oct2017_out}/{folder}"):
            cls = name.split("-")[0]
            split = "train" if folder.startswith("train") else "test"
            with Image.open(f"{oct2017_raw}/{split}/{cls}/{name[:-4]}.jpeg") as jpeg:
                original = np.asarray(jpeg.convert("L"))
            assert np.array_equal(read_png(f"{oct2017_out}/{folder}/{name}"), original)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda raw: os.rename(f"{raw}/test/CNV/CNV-5101000-1.jpeg", f"{raw}/test/CNV/cnv_5101000.jpeg"), ValueError,
         "cnv_5101000.jpeg: OCT2017 file names"),
        (lambda raw: shutil.rmtree(f"{raw}/test/DME"), FileNotFoundError, "test DME folder .*test/DME does not exist"),
        (lambda raw: shutil.rmtree(f"{raw}/train"), FileNotFoundError, "training NORMAL folder .*train/NORMAL"),
        (lambda raw: [os.remove(f"{raw}/test/NORMAL/{f}") for f in os.listdir(f"{raw}/test/NORMAL")], ValueError,
         "no OCT2017 test NORMAL image in .*test/NORMAL"),
    ],
)  # fmt: skip
def test_oct2017_bad_input(oct2017_raw, tmp_path, change, error, match):
    raw = str(tmp_path / "OCT2017")
    shutil.copytree(oct2017_raw, raw)
    change(raw)
    with pytest.raises(error, match=match):
        convert_oct2017(raw, str(tmp_path / "out"), **OCT2017_OPTIONS)
    assert not os.path.exists(tmp_path / "out")


def test_oct2017_unreadable_jpeg(oct2017_raw, tmp_path):
    raw = str(tmp_path / "OCT2017")
    shutil.copytree(oct2017_raw, raw)
    with open(f"{raw}/test/DRUSEN/DRUSEN-7101000-2.jpeg", "wb") as f:
        f.write(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot read image .*DRUSEN-7101000-2.jpeg"):
        convert_oct2017(raw, str(tmp_path / "out"), **OCT2017_OPTIONS)


# ----------------------------------------------------------------------------------------------- RESC
@pytest.mark.parametrize(
    "folder, count, foreground",
    [
        ("train/good", 6, None),
        ("valid/good", 2, False),  # no good masks in the input: all-zero ones are written
        ("valid/Ungood", 3, True),  # 0/1 masks in the input
        ("test/good", 2, False),
        ("test/Ungood", 3, True),  # 0/255 masks in the input
    ],
)
def test_resc_normalised(resc_raw, resc_out, folder, count, foreground):
    images = folder if folder.startswith("train") else f"{folder}/img"
    names = list_pngs(f"{resc_out}/{images}")
    assert len(names) == count
    for name in names:
        image = read_png(f"{resc_out}/{images}/{name}")  # RGB inputs are now grey
        assert image.shape == (40, 40)
        if foreground is not None:
            mask = read_png(f"{resc_out}/{folder}/label/{name}")
            assert mask.shape == image.shape and set(np.unique(mask)) == ({0, 255} if foreground else {0})
            if foreground:
                with Image.open(f"{resc_raw}/{folder}/label/{name}") as raw_mask:
                    assert np.array_equal(mask > 0, np.asarray(raw_mask) > 0)


def _resize_mask(raw: str) -> None:
    Image.new("L", (32, 40)).save(f"{raw}/test/Ungood/label/test_011.png")


def _dirty_good_mask(raw: str) -> None:
    Image.new("L", (40, 40), 255).save(f"{raw}/test/good/label/test_001.png")


@pytest.mark.parametrize(
    "change, error, match",
    [
        (_resize_mask, ValueError, r"mask .*test/Ungood/label/test_011.png has size \(40, 32\) but its image"),
        (lambda raw: os.remove(f"{raw}/valid/Ungood/label/valid_012.png"), FileNotFoundError,
         "anomalous image .*valid/Ungood/img/valid_012.png has no mask"),
        (_dirty_good_mask, ValueError, "mask .*test_001.png of normal image .* is not empty"),
        (lambda raw: shutil.rmtree(f"{raw}/test/Ungood"), FileNotFoundError, "RESC test/Ungood folder .* not exist"),
        (lambda raw: shutil.rmtree(f"{raw}/train"), FileNotFoundError, "RESC train folder .*train/good"),
    ],
)  # fmt: skip
def test_resc_bad_input(resc_raw, tmp_path, change, error, match):
    raw = str(tmp_path / "RESC")
    shutil.copytree(resc_raw, raw)
    change(raw)
    with pytest.raises(error, match=match):
        convert_resc(raw, str(tmp_path / "out"))


@pytest.mark.parametrize("command", ["oct2017", "resc"])
def test_cli(oct2017_raw, resc_raw, tmp_path, capsys, command):
    raw = {"oct2017": oct2017_raw, "resc": resc_raw}[command]
    extra = ["--valid_fraction", "0.3", "--seed", "0"] if command == "oct2017" else []
    assert main([command, "--input_dir", raw, "--output_dir", str(tmp_path / "out")] + extra) == 0
    assert "test/Ungood: " in capsys.readouterr().out
    assert main([command, "--input_dir", str(tmp_path / "none"), "--output_dir", str(tmp_path / "o2")]) == 2
    assert "none does not exist" in capsys.readouterr().err
