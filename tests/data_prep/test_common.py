from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep.common import (
    GOOD,
    UNGOOD,
    BmadWriter,
    binary_mask,
    check_volume_pair,
    iter_axial_slices,
    load_volume,
    percentile_to_uint8,
    prepare_output_dir,
    read_mask,
    run_converter,
    scale_to_uint8,
    split_ids,
    write_png,
)
from multiad_monai.transforms import SLICE_AXIS, VolumeToSlices, load_volume_for_slicing
from tests.data_prep.conftest import brats_affine, ct_affine, save_nifti
from tests.nifti import STORAGES, store_as


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


def _prepare(path: str, out: str) -> dict[int, np.ndarray]:
    """Cut a uint8 NIfTI as the converters do (no intensity change), write PNGs and read them back by index."""
    volume = load_volume(path)
    for k, image, label in iter_axial_slices(volume, load_volume(path, integer=True), path=path):
        assert np.array_equal(label, image)
        write_png(os.path.join(out, f"slice{k:03d}.png"), image)
    return {int(f[5:8]): np.asarray(Image.open(os.path.join(out, f))) for f in sorted(os.listdir(out))}


@pytest.mark.parametrize("name, order, flip", STORAGES)
def test_storage_does_not_change_prepared_slices(name, order, flip, tmp_path):
    """(a) The same anatomy stored RAS or otherwise gives the same PNGs and the same package slices."""
    ras = np.random.default_rng(1).integers(0, 256, (5, 6, 7)).astype(np.uint8)
    affine = ct_affine(flip=False)
    save_nifti(str(tmp_path / "ras.nii.gz"), ras, affine)
    save_nifti(str(tmp_path / f"{name}.nii.gz"), *store_as(ras, affine, order, flip))
    reference = _prepare(str(tmp_path / "ras.nii.gz"), str(tmp_path / "png_ras"))
    prepared = _prepare(str(tmp_path / f"{name}.nii.gz"), str(tmp_path / f"png_{name}"))
    assert sorted(prepared) == list(range(7)) and all(prepared[k].shape == (6, 5) for k in prepared)
    assert all(np.array_equal(prepared[k], reference[k]) for k in reference)
    in_memory = VolumeToSlices(SLICE_AXIS)(load_volume_for_slicing(str(tmp_path / f"{name}.nii.gz")))
    in_memory_ras = VolumeToSlices(SLICE_AXIS)(load_volume_for_slicing(str(tmp_path / "ras.nii.gz")))
    assert all(torch.equal(x.as_tensor(), y.as_tensor()) for x, y in zip(in_memory, in_memory_ras))


@pytest.mark.parametrize("name, order, flip", STORAGES)
def test_prepared_slice_is_the_package_slice(name, order, flip, tmp_path):
    """(b) A PNG written from a uint8 volume (identity intensity) equals the package's slice of that NIfTI."""
    ras = np.random.default_rng(2).integers(0, 256, (5, 6, 7)).astype(np.uint8)
    path = str(tmp_path / f"{name}.nii.gz")
    save_nifti(path, *store_as(ras, brats_affine((5, 6, 7)), order, flip))
    prepared = _prepare(path, str(tmp_path / "png"))
    slices = VolumeToSlices(SLICE_AXIS)(load_volume_for_slicing(path))
    assert [s.meta["slice_index"] for s in slices] == sorted(prepared)
    assert all(np.array_equal(prepared[s.meta["slice_index"]], s[0].numpy()) for s in slices)


# bright voxels placed by anatomy (RAS index of a (5, 6, 7) volume) -> (slice index, PNG row, PNG column)
MARKERS = {
    (4, 5, 1): (1, 0, 0),  # right anterior: top-left
    (4, 0, 3): (3, 5, 0),  # right posterior: bottom-left
    (0, 5, 5): (5, 0, 4),  # left anterior: top-right
}


@pytest.mark.parametrize("name, order, flip", STORAGES)
def test_prepared_slices_show_radiological_display(name, order, flip, tmp_path):
    """(b) Whatever the storage, each marker is the only bright pixel of its PNG, at the expected corner."""
    ras = np.zeros((5, 6, 7), dtype=np.uint8)
    for marker in MARKERS:
        ras[marker] = 255
    path = str(tmp_path / f"{name}.nii")
    save_nifti(path, *store_as(ras, np.eye(4), order, flip))
    prepared = _prepare(path, str(tmp_path / "png"))
    for k, row, column in MARKERS.values():
        assert np.argwhere(prepared[k] == 255).tolist() == [[row, column]]
    assert sum(int(p.sum()) for p in prepared.values()) == 255 * len(MARKERS)


@pytest.mark.parametrize("name, order, flip", STORAGES)
def test_check_volume_pair_gives_the_oriented_shape(name, order, flip, tmp_path):
    stored, affine = store_as(np.zeros((5, 6, 7), dtype=np.uint8), np.eye(4), order, flip)
    save_nifti(str(tmp_path / "image.nii.gz"), stored, affine)
    save_nifti(str(tmp_path / "label.nii.gz"), stored, affine)
    assert check_volume_pair(str(tmp_path / "image.nii.gz"), str(tmp_path / "label.nii.gz")) == (6, 5, 7)


def test_iter_axial_slices_checks_range_and_shapes():
    volume = np.zeros((6, 5, 7), dtype=np.uint8)
    assert [k for k, _, _ in iter_axial_slices(volume, volume, (2, 4))] == [2, 3]
    with pytest.raises(ValueError, match=r"slice range \[5, 9\) is outside v.nii, which has 7 axial slices"):
        list(iter_axial_slices(volume, volume, (5, 9), "v.nii"))
    with pytest.raises(ValueError, match="label of v.nii has shape"):
        list(iter_axial_slices(volume, volume[:, :, :3], path="v.nii"))


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


def test_check_volume_pair_rejects_a_label_in_another_orientation(tmp_path):
    save_nifti(str(tmp_path / "image.nii.gz"), np.zeros((5, 6, 7), dtype=np.uint8), np.eye(4))
    save_nifti(
        str(tmp_path / "label.nii.gz"), *store_as(np.zeros((6, 5, 7), dtype=np.uint8), np.eye(4), (1, 0, 2), (0, 0, 0))
    )
    with pytest.raises(ValueError, match=r"label.nii.gz has shape \(5, 6, 7\) .* another orientation"):
        check_volume_pair(str(tmp_path / "image.nii.gz"), str(tmp_path / "label.nii.gz"))


def test_run_converter_ends_any_error_with_its_message_as_the_last_line(tmp_path, capsys):
    """A reader's own error type (SimpleITK raises RuntimeError) ends in one line naming the file, exit code 1."""
    import SimpleITK as sitk

    broken = tmp_path / "scan.mha"
    broken.write_bytes(b"ObjectType = Image\nNDims = 3\n")
    assert run_converter("data_prep.test", lambda: {"n": sitk.ReadImage(str(broken)).GetSize()[0]}) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("data_prep.test: error: RuntimeError: ") and "(the full traceback is above)" in last
    assert str(broken) in last or "scan.mha" in last
    assert run_converter("data_prep.test", lambda: {"train/good": 3}) == 0
