from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from multiad_monai.transforms import EnsureMaskd, EnsureRGB, EnsureRGBd, VolumeToSlices, VolumeToSlicesd


@pytest.mark.parametrize("channels, expected_first", [(1, 0), (2, 0), (3, 1), (4, 1)])
def test_ensure_rgb(channels, expected_first):
    img = torch.stack([torch.full((5, 6), float(c)) for c in range(channels)])
    out = EnsureRGB()(img)
    assert out.shape == (3, 5, 6)
    assert out[1, 0, 0].item() == expected_first


def test_ensure_rgb_names_the_file_on_bad_channels():
    img = MetaTensor(torch.zeros(5, 8, 8), meta={"filename_or_obj": "/data/odd.tif"})
    with pytest.raises(ValueError, match="odd.tif"):
        EnsureRGB()(img)
    assert EnsureRGBd("image")({"image": torch.zeros(1, 4, 4)})["image"].shape == (3, 4, 4)


def test_volume_to_slices_keeps_meta_and_range():
    volume = MetaTensor(
        torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(1, 2, 3, 5), meta={"filename_or_obj": "v.nii"}
    )
    slices = VolumeToSlices(axis=2, slice_range=(1, 4))(volume)
    assert len(slices) == 3 and slices[0].shape == (1, 2, 3)
    assert [s.meta["slice_index"] for s in slices] == [1, 2, 3]
    assert torch.equal(slices[0].as_tensor(), volume[..., 1].as_tensor())
    assert len(VolumeToSlices(axis=0)(volume)) == 2


@pytest.mark.parametrize("shape", [(1, 4, 4), (2, 4, 4, 4), (1, 4, 4, 4, 2)])
def test_volume_to_slices_rejects_non_3d(shape):
    with pytest.raises(ValueError, match="expected a 3D volume.*bad.nii"):
        VolumeToSlices()(MetaTensor(torch.zeros(shape), meta={"filename_or_obj": "bad.nii"}))


def test_volume_to_slicesd_labels_and_skips_background():
    image = torch.zeros(1, 8, 8, 4)
    image[..., 1:] = 1.0  # slice 0 is empty background
    mask = torch.zeros(1, 8, 8, 4)
    mask[0, 2:4, 2:4, 2] = 1
    samples = VolumeToSlicesd(["image", "mask"], min_foreground=0.5)({"image": image, "mask": mask, "case": "a"})
    assert [s["label"] for s in samples] == [0, 1, 0]
    assert all(s["case"] == "a" and s["mask"].shape == (1, 8, 8) for s in samples)


def test_volume_to_slicesd_rejects_mismatched_segmentation():
    image = MetaTensor(torch.zeros(1, 8, 8, 4), meta={"filename_or_obj": "img.nii"})
    mask = MetaTensor(torch.zeros(1, 8, 6, 4), meta={"filename_or_obj": "seg.nii"})
    with pytest.raises(ValueError, match="seg.nii.*img.nii"):
        VolumeToSlicesd(["image", "mask"])({"image": image, "mask": mask})


def test_ensure_maskd_fills_and_checks():
    image = MetaTensor(torch.zeros(3, 8, 8), meta={"filename_or_obj": "a.png"})
    assert EnsureMaskd()({"image": image})["mask"].shape == (1, 8, 8)
    binary = EnsureMaskd()({"image": image, "mask": torch.full((1, 8, 8), 255.0)})["mask"]
    assert binary.max().item() == 1.0
    bad = MetaTensor(torch.zeros(1, 8, 9), meta={"filename_or_obj": "a_mask.png"})
    with pytest.raises(ValueError, match="a_mask.png.*a.png"):
        EnsureMaskd()({"image": image, "mask": bad})
