from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from nibabel.orientations import apply_orientation
from PIL import Image

from data_prep.common import (
    GOOD,
    UNGOOD,
    BmadWriter,
    binary_mask,
    inplane_transform,
    percentile_to_uint8,
    prepare_output_dir,
    read_mask,
    scale_to_uint8,
    split_ids,
    write_png,
)
from tests.data_prep.conftest import brats_affine, ct_affine


@pytest.mark.parametrize(
    "value, window, expected",
    [
        (-1000, (-200, 250), 0),  # air
        (-200, (-200, 250), 0),
        (25, (-200, 250), 128),  # centre: 127.5 rounds to even
        (100, (-200, 250), 170),  # liver
        (250, (-200, 250), 255),
        (1200, (-200, 250), 255),  # bone
        (0, (-100, 100), 128),
        (40, (-160, 240), 128),
    ],
)
def test_scale_to_uint8_hu_window(value, window, expected):
    out = scale_to_uint8(np.array([[value]], dtype=np.int16), *window)
    assert out.dtype == np.uint8 and int(out[0, 0]) == expected


def test_scale_to_uint8_rejects_empty_window():
    with pytest.raises(ValueError, match="must be greater"):
        scale_to_uint8(np.zeros((2, 2)), 250, -200)


@pytest.mark.parametrize(
    "foreground, expected_min, expected_max",
    [
        (np.linspace(1, 1000, 400), 0, 255),  # spread: the percentiles span 0..255
        (np.full(400, 77.0), 128, 128),  # constant: mid-grey
    ],
)
def test_percentile_to_uint8_on_foreground(foreground, expected_min, expected_max):
    volume = np.zeros((20, 40))
    volume[:, :20] = foreground.reshape(20, 20)
    out = percentile_to_uint8(volume, 0.5, 99.5, where=volume > 0)
    assert np.all(out[:, 20:] == 0)  # background stays black
    assert out[:, :20].min() == expected_min and out[:, :20].max() == expected_max


def test_percentile_to_uint8_needs_foreground():
    with pytest.raises(ValueError, match="no voxel"):
        percentile_to_uint8(np.zeros((4, 4)), where=np.zeros((4, 4), dtype=bool))


@pytest.mark.parametrize("values", [[0, 1], [0, 255], [0, 3, 7]])
def test_binary_mask(values, tmp_path):
    mask = np.array(values, dtype=np.uint8).reshape(1, -1)
    assert binary_mask(mask).tolist() == [[0] + [255] * (len(values) - 1)]
    Image.fromarray(mask).convert("RGB").save(tmp_path / "m.png")
    assert read_mask(str(tmp_path / "m.png")).tolist() == binary_mask(mask).tolist()


@pytest.mark.parametrize(
    "n, fractions, rest, sizes",
    [
        (5, {"valid": 0.2, "test": 0.2}, "train", {"valid": 1, "test": 1, "train": 3}),
        (100, {"valid": 0.1, "test": 0.2}, "train", {"valid": 10, "test": 20, "train": 70}),
        (3, {"valid": 0.01, "test": 0.01}, "train", {"valid": 1, "test": 1, "train": 1}),  # requested: at least one
        (10, {"valid": 0.0}, "test", {"test": 10}),
        (131, {"valid": 0.1}, "test", {"valid": 13, "test": 118}),  # LiTS
    ],
)
def test_split_ids_sizes_and_reproducibility(n, fractions, rest, sizes):
    ids = [f"patient{i:03d}" for i in range(n)]
    assignment = split_ids(ids, fractions, seed=0, rest=rest)
    assert sorted(assignment) == ids
    assert {s: list(assignment.values()).count(s) for s in sizes} == sizes
    assert split_ids(list(reversed(ids + ids)), fractions, seed=0, rest=rest) == assignment  # order, duplicates
    if n >= 100:
        assert split_ids(ids, fractions, seed=1, rest=rest) != assignment


@pytest.mark.parametrize(
    "n, fractions, match",
    [
        (10, {"valid": 0.5, "test": 0.5}, "sum to 1"),
        (10, {"valid": -0.1}, r"in \[0, 1\)"),
        (2, {"valid": 0.1, "test": 0.1}, "too few"),
        (0, {"valid": 0.1}, "too few"),
    ],
)
def test_split_ids_errors(n, fractions, match):
    with pytest.raises(ValueError, match=match):
        split_ids([str(i) for i in range(n)], fractions)


@pytest.mark.parametrize(
    "affine, marker",
    [
        (np.eye(4), (-1, -1)),  # RAS: the most right/anterior voxel is the last one
        (brats_affine(), (0, 0)),  # LPS (BraTS): the first one
        (ct_affine(flip=False), (-1, -1)),
        (ct_affine(flip=True), (0, 0)),
        (np.diag([-1.0, 1.0, 1.0, 1.0]), (0, -1)),  # LAS
        (np.array([[0, 1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1]]), (-1, -1)),  # in-plane axes swapped
    ],
)
def test_inplane_transform_gives_radiological_display(affine, marker):
    """The voxel at the patient's right-anterior corner lands top-left, whatever the storage order."""
    image = np.zeros((6, 8), dtype=np.uint8)
    image[marker] = 255
    shown = apply_orientation(image, inplane_transform(affine))
    assert shown[0, 0] == 255 and shown.sum() == 255


def test_inplane_transform_warns_on_non_axial_last_axis(caplog):
    sagittal = np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])
    with caplog.at_level(logging.WARNING):
        assert inplane_transform(sagittal, "sag.nii.gz") is None
    assert "sag.nii.gz" in caplog.text and "not superior-inferior" in caplog.text


def test_write_png_replaces_atomically(tmp_path, monkeypatch):
    path = str(tmp_path / "a" / "x.png")
    write_png(path, np.full((3, 5), 7, dtype=np.uint8))
    assert np.asarray(Image.open(path)).tolist() == [[7] * 5] * 3

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_png(path, np.zeros((3, 5), dtype=np.uint8))
    assert os.listdir(tmp_path / "a") == ["x.png"]  # the old file is intact, no temporary file left
    assert np.asarray(Image.open(path)).max() == 7


@pytest.mark.parametrize("array", [np.zeros((3, 5), dtype=np.float32), np.zeros((3, 5, 3), dtype=np.uint8)])
def test_write_png_rejects_non_grey_uint8(array, tmp_path):
    with pytest.raises(ValueError, match="expected a 2D uint8"):
        write_png(str(tmp_path / "x.png"), array)


def test_prepare_output_dir_refuses_non_empty(tmp_path):
    prepare_output_dir(str(tmp_path / "new"))
    (tmp_path / "new" / "old.png").write_bytes(b"")
    with pytest.raises(FileExistsError, match="new already exists and is not empty"):
        prepare_output_dir(str(tmp_path / "new"))


@pytest.mark.parametrize(
    "split, cls, mask, match",
    [
        ("train", UNGOOD, None, "training takes normal samples only"),
        ("test", UNGOOD, None, "has no mask"),
        ("test", GOOD, np.zeros((2, 2)), "has size"),
        ("other", GOOD, None, "cannot write"),
    ],
)
def test_bmad_writer_rejects(split, cls, mask, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        BmadWriter(str(tmp_path), with_masks=True).write(split, cls, "x", np.zeros((4, 4), dtype=np.uint8), mask)


def test_bmad_writer_paths_and_counts(tmp_path):
    writer = BmadWriter(str(tmp_path), with_masks=True)
    image = np.full((4, 6), 9, dtype=np.uint8)
    writer.write("train", GOOD, "p1_slice001", image)
    writer.write("valid", GOOD, "p2_slice001", image)
    writer.write("test", UNGOOD, "p3_slice001", image, np.eye(4, 6))
    files = sorted(os.path.relpath(os.path.join(d, f), tmp_path) for d, _, fs in os.walk(tmp_path) for f in fs)
    assert files == [
        "test/Ungood/img/p3_slice001.png",
        "test/Ungood/label/p3_slice001.png",
        "train/good/p1_slice001.png",
        "valid/good/img/p2_slice001.png",
        "valid/good/label/p2_slice001.png",
    ]
    assert np.asarray(Image.open(tmp_path / "valid/good/label/p2_slice001.png")).max() == 0
    assert set(np.unique(np.asarray(Image.open(tmp_path / "test/Ungood/label/p3_slice001.png")))) == {0, 255}
    assert writer.counts == {"train/good": 1, "valid/good": 1, "test/Ungood": 1}
