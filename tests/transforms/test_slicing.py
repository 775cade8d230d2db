"""The slice convention: any storage of a volume gives the same oriented volume and axial slices."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from multiad_monai.transforms import (
    SLICE_AXCODES,
    SLICE_AXIS,
    OrientForSlicing,
    OrientForSlicingd,
    VolumeToSlices,
    load_volume_for_slicing,
    oriented_shape,
)
from tests.nifti import STORAGES, store_as

SHAPE = (5, 6, 7)  # RAS: 5 voxels right-left... every axis a different size, so a swap cannot go unnoticed
AFFINE = np.array([[0.8, 0, 0, -2.0], [0, 0.9, 0, -3.0], [0, 0, 2.5, 10.0], [0, 0, 0, 1]])


def _pls(ras: np.ndarray) -> np.ndarray:
    """What the convention must give for an RAS array: rows anterior -> posterior, columns right -> left."""
    return np.flip(ras.transpose(1, 0, 2), (0, 1))


def _write(path, array: np.ndarray, affine: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


def test_convention_constants():
    """Changing these changes every prepared dataset and trained model: pin them."""
    assert (SLICE_AXCODES, SLICE_AXIS) == ("PLS", 2)
    assert VolumeToSlices().axis == SLICE_AXIS


@pytest.mark.parametrize("name, order, flip", STORAGES)
def test_any_storage_gives_the_same_slices(name, order, flip, tmp_path):
    ras = np.random.default_rng(0).integers(-1000, 1000, SHAPE).astype(np.int16)
    stored, affine = store_as(ras, AFFINE, order, flip)
    volume = load_volume_for_slicing(_write(tmp_path / f"{name}.nii.gz", stored, affine))
    assert volume.shape == (1, 6, 5, 7) and volume.dtype == torch.int16
    assert oriented_shape(stored.shape, affine) == (6, 5, 7)
    reference = load_volume_for_slicing(_write(tmp_path / "ras.nii.gz", ras, AFFINE))
    assert torch.equal(volume.as_tensor(), reference.as_tensor())
    assert np.array_equal(volume[0].numpy(), _pls(ras))
    slices = VolumeToSlices()(volume)
    assert [s.meta["slice_index"] for s in slices] == list(range(7))
    assert all(np.array_equal(s[0].numpy(), _pls(ras)[:, :, k]) for k, s in enumerate(slices))


# marker voxel (RAS index) -> where it must land: (row, column, slice)
MARKERS = {
    (4, 5, 0): (0, 0, 0),  # right, anterior, inferior: top-left of the first slice
    (4, 0, 1): (5, 0, 1),  # right, posterior: bottom-left
    (0, 5, 2): (0, 4, 2),  # left, anterior: top-right
    (0, 0, 6): (5, 4, 6),  # left, posterior, superior: bottom-right of the last slice
}


@pytest.mark.parametrize("name, order, flip", STORAGES)
def test_markers_land_in_radiological_display(name, order, flip, tmp_path):
    ras = np.zeros(SHAPE, dtype=np.uint8)
    for value, marker in enumerate(MARKERS, start=1):
        ras[marker] = value
    volume = load_volume_for_slicing(_write(tmp_path / f"{name}.nii", *store_as(ras, AFFINE, order, flip)))
    for value, expected in enumerate(MARKERS.values(), start=1):
        assert tuple(int(i) for i in np.argwhere(volume[0].numpy() == value)[0]) == expected


@pytest.mark.parametrize("name, order, flip", STORAGES)
def test_orient_for_slicing_inverts_to_the_file_order(name, order, flip):
    stored, affine = store_as(np.arange(np.prod(SHAPE)).reshape(SHAPE), AFFINE, order, flip)
    image = MetaTensor(torch.from_numpy(stored)[None], affine=torch.from_numpy(affine))
    orient = OrientForSlicing()
    assert torch.equal(orient.inverse(orient(image)).as_tensor(), image.as_tensor())
    orientd = OrientForSlicingd(["image", "mask"])
    oriented = orientd({"image": image, "mask": image.clone()})
    assert oriented["mask"].shape == (1, 6, 5, 7)
    assert torch.equal(orientd.inverse(oriented)["mask"].as_tensor(), image.as_tensor())


@pytest.mark.parametrize(
    "image, match",
    [
        (torch.zeros(1, 4, 4, 4), "MetaTensor carrying its affine"),
        (MetaTensor(torch.zeros(1, 4, 4), meta={"filename_or_obj": "flat.png"}), r"3D volume.*flat.png"),
    ],
)
def test_orient_for_slicing_rejects(image, match):
    with pytest.raises(ValueError, match=match):
        OrientForSlicing()(image)


@pytest.mark.parametrize(
    "shape, error, match",
    [
        ((5, 6, 7, 1), None, None),  # trailing singleton 4th axis: a 3D volume
        ((5, 6, 7, 2), ValueError, r"bad.nii.gz is not a one-channel 3D volume"),
    ],
)
def test_load_volume_for_slicing_shapes(shape, error, match, tmp_path):
    path = _write(tmp_path / "bad.nii.gz", np.zeros(shape, dtype=np.uint8), AFFINE)
    if error is None:
        assert load_volume_for_slicing(path).shape == (1, 6, 5, 7)
    else:
        with pytest.raises(error, match=match):
            load_volume_for_slicing(path)


def test_load_volume_for_slicing_names_missing_and_broken_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing volume .*none.nii.gz"):
        load_volume_for_slicing(str(tmp_path / "none.nii.gz"))
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="cannot read .*broken.nii.gz"):
        load_volume_for_slicing(str(tmp_path / "broken.nii.gz"))
