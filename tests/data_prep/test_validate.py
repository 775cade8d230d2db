from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from data_prep.validate import ValidationReport, main, validate_folder
from multiad_monai.data import load_datasets
from multiad_monai.recipe import Recipe
from tests.data_prep.conftest import list_pngs

PREPARED = ["brats_out", "liver_out", "oct2017_out", "resc_out"]


@pytest.mark.parametrize("prepared", PREPARED)
def test_converted_folders_validate(prepared, request, capsys):
    out = request.getfixturevalue(prepared)
    report = validate_folder(out)
    assert isinstance(report, ValidationReport) and report.ok and report.layout == "bmad", report.format()
    rows = {(c.split, c.cls): c for c in report.classes}
    assert rows[("train", "good")].images == len(list_pngs(f"{out}/train/good"))
    for split in ("valid", "test"):
        for cls in ("good", "Ungood"):
            row = rows[(split, cls)]
            assert row.images == len(list_pngs(f"{out}/{split}/{cls}/img")) > 0 and row.problems == 0
            assert row.masks == (0 if prepared == "oct2017_out" else row.images)
    assert main([out]) == 0
    printed = capsys.readouterr().out
    assert "split  class   images  masks  problems" in printed and "OK: no problem found" in printed


@pytest.mark.parametrize("prepared", PREPARED)
def test_converted_folders_load(prepared, request):
    out = request.getfixturevalue(prepared)
    data = load_datasets(out, Recipe(image_size=32))
    assert data.layout == "bmad" and data.has_masks == (prepared != "oct2017_out")
    assert len(data.train) + len(data.calibration) == len(list_pngs(f"{out}/train/good"))
    sample = data.test[0]
    assert sample["image"].shape == (3, 32, 32) and sample["mask"].shape == (1, 32, 32)
    assert {s["label"] for s in data.test.data} == {0, 1} and {s["label"] for s in data.valid.data} == {0, 1}


def _corrupt_png(root: str) -> str:
    path = f"{root}/test/Ungood/img/test_011.png"
    with open(path, "r+b") as f:
        f.seek(40)
        f.write(b"\0" * 200)  # a damaged image stream: the header still opens, decoding fails
    return path


def _truncated_png(root: str) -> str:
    path = f"{root}/train/good/0003.png"
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n")
    return path


def _mask_size(root: str) -> str:
    path = f"{root}/valid/Ungood/label/valid_010.png"
    Image.new("L", (40, 30), 255).save(path)
    return path


def _non_binary_mask(root: str) -> str:
    path = f"{root}/test/Ungood/label/test_012.png"
    Image.fromarray(np.arange(1600, dtype=np.uint8).reshape(40, 40) % 7).save(path)
    return path


def _empty_anomaly_mask(root: str) -> str:
    path = f"{root}/test/Ungood/label/test_010.png"
    Image.new("L", (40, 40)).save(path)
    return path


def _lesion_in_good_mask(root: str) -> str:
    path = f"{root}/valid/good/label/valid_001.png"
    Image.new("L", (40, 40), 255).save(path)
    return path


def _missing_mask(root: str) -> str:
    os.remove(f"{root}/test/Ungood/label/test_011.png")
    return f"{root}/test/Ungood/img/test_011.png"


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (_corrupt_png, "unreadable"),
        (_truncated_png, "unreadable"),
        (_mask_size, r"mask size \(30, 40\) differs from its image's \(40, 40\)"),
        (_non_binary_mask, "mask is not binary"),
        (_empty_anomaly_mask, "mask of an anomalous image is empty"),
        (_lesion_in_good_mask, "mask of a normal image is not empty"),
        (_missing_mask, "cannot index: .*test_011.png has no mask"),
    ],
)
def test_problems_are_reported_with_their_file(resc_out, tmp_path, capsys, corrupt, message):
    root = str(tmp_path / "resc")
    shutil.copytree(resc_out, root)
    path = corrupt(root)
    report = validate_folder(root)
    assert not report.ok
    assert any(path in p.path + p.message for p in report.problems), report.format()
    assert any(re.search(message, p.message) for p in report.problems), report.format()
    assert main([root]) == 1
    printed = capsys.readouterr().out
    assert path in printed and "problem(s):" in printed


def test_problem_rows_count_their_class(resc_out, tmp_path):
    root = str(tmp_path / "resc")
    shutil.copytree(resc_out, root)
    _mask_size(root)
    _non_binary_mask(root)
    rows = {(c.split, c.cls): c.problems for c in validate_folder(root).classes}
    assert rows == {
        ("train", "good"): 0,
        ("valid", "good"): 0,
        ("valid", "Ungood"): 1,
        ("test", "good"): 0,
        ("test", "Ungood"): 1,
    }


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: None, "cannot index: dataset_dir .* does not exist"),
        (lambda root: os.makedirs(f"{root}/stuff"), "cannot index: cannot tell the layout"),
    ],
)
def test_not_a_dataset(tmp_path, make, message):
    root = str(tmp_path / "folder")
    make(root)
    report = validate_folder(root)
    assert not report.ok and report.layout is None
    assert re.search(message, report.problems[0].message)
    assert main([root]) == 1
