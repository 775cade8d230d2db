from __future__ import annotations

import warnings

import pytest
import torch
from monai.data import MetaTensor

from multiad_monai.transforms import (
    CheckHounsfield,
    CheckHounsfieldd,
    EnsureMaskd,
    EnsureRGB,
    EnsureRGBd,
    PadToSquare,
    PadToSquared,
    ScaleIntensityByDtype,
    ScaleIntensityByDtyped,
    SplitLabelsd,
    VolumeToSlices,
    VolumeToSlicesd,
)


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


@pytest.mark.parametrize(
    "array, expected_max",
    [
        (torch.full((1, 2, 2), 255, dtype=torch.uint8), 1.0),
        (torch.full((1, 2, 2), 65535, dtype=torch.int32), 1.0),  # 16-bit PNG as PIL/MONAI load it
        (torch.full((1, 2, 2), 0.25), 0.25),
    ],
)
def test_scale_intensity_by_dtype(array, expected_max):
    out = ScaleIntensityByDtyped("image")({"image": array})["image"]
    assert out.dtype == torch.float32 and out.max().item() == pytest.approx(expected_max)


def test_scale_intensity_by_dtype_rejects_wide_integers():
    with pytest.raises(ValueError, match="above 16 bits"):
        ScaleIntensityByDtype()(
            MetaTensor(torch.full((1, 2, 2), 70000, dtype=torch.int32), meta={"filename_or_obj": "x.tif"})
        )


@pytest.mark.parametrize("shape, side", [((1, 4, 8), 8), ((3, 9, 5), 9), ((1, 6, 6), 6)])
def test_pad_to_square_keeps_content_centred(shape, side):
    img = torch.ones(shape)
    out = PadToSquare()(img)
    assert out.shape == (shape[0], side, side) and out.sum() == img.sum()
    d = PadToSquared(["image", "mask"])({"image": img, "mask": torch.ones(1, *shape[1:])})
    assert d["mask"].shape == (1, side, side) and torch.equal(d["mask"][0] > 0, d["image"][0] > 0)


def test_check_hounsfield_warns_with_the_file_name():
    ct = MetaTensor(torch.tensor([[[-1000.0, 40.0]]]), meta={"filename_or_obj": "ct.nii"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CheckHounsfieldd("image")({"image": ct})
    png_like = MetaTensor(torch.tensor([[[0.0, 255.0]]]), meta={"filename_or_obj": "liver.png"})
    with pytest.warns(UserWarning, match="liver.png does not look like CT"):
        CheckHounsfield()(png_like)


def test_split_labels_and_organ_slice_selection():
    labels = torch.zeros(1, 4, 4, 3)
    labels[0, :2, :2, 1] = 1  # liver on slice 1
    labels[0, :2, :2, 2] = 1
    labels[0, 0, 0, 2] = 2  # tumour inside the liver on slice 2
    d = SplitLabelsd("mask", "organ", organ_labels=[1], lesion_labels=[2])(
        {"image": torch.ones(1, 4, 4, 3), "mask": labels}
    )
    assert d["organ"].sum() == 8 and d["mask"].sum() == 1
    samples = VolumeToSlicesd(["image", "mask", "organ"], min_foreground=0.1, select_key="organ")(d)
    assert [s["label"] for s in samples] == [0, 1]  # slice 0 has no liver: dropped
    with pytest.raises(ValueError, match="no label map"):
        SplitLabelsd()({"image": MetaTensor(torch.zeros(1, 2, 2, 2), meta={"filename_or_obj": "ct.nii"})})
