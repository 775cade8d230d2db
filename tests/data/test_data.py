from __future__ import annotations

import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from multiad_monai.data import (
    DatasetIndex,
    aspect_preserving_size,
    build_brain_demo,
    categories,
    dataset_fingerprint,
    default_prior_weight,
    detect_layout,
    index_dataset,
    load_datasets,
    require_dataset_dir,
)
from multiad_monai.recipe import Recipe
from tests.conftest import write_ct_volumes, write_mvtec, write_volumes


def test_detect_layouts(mvtec_dir, bmad_dir, volumes_dir, tmp_path):
    assert detect_layout(mvtec_dir) == "mvtec"
    assert detect_layout(bmad_dir) == "bmad"
    assert detect_layout(volumes_dir) == "volumes"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        detect_layout(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="cannot tell the layout"):
        detect_layout(str(tmp_path))


def test_teacher_prior_is_off_for_volumes(mvtec_dir, bmad_dir, volumes_dir, tmp_path):
    assert default_prior_weight(mvtec_dir) == default_prior_weight(bmad_dir) == 1.0
    assert default_prior_weight(volumes_dir) == 0.0
    write_mvtec(str(tmp_path / "wood"))
    assert default_prior_weight(str(tmp_path), "wood") == 1.0
    with pytest.raises(FileNotFoundError, match="does not exist"):
        default_prior_weight(str(tmp_path), "tile")


def test_aspect_preserving_size_keeps_long_images_long(mvtec_dir, volumes_dir, tmp_path):
    assert aspect_preserving_size(mvtec_dir, 64) == [64, 64]
    assert aspect_preserving_size(volumes_dir, 64) == [64, 64]
    write_mvtec(str(tmp_path / "steel" / "strip"), size=40, width=100)  # 2.5:1, like a 500x1250 scan
    assert aspect_preserving_size(str(tmp_path / "steel"), 64, "strip") == [64, 160]
    assert aspect_preserving_size(str(tmp_path / "steel"), [64, 96], "strip") == [64, 96]  # explicit wins
    tall = write_mvtec(str(tmp_path / "tall"), size=100, width=40)
    assert aspect_preserving_size(tall, 64) == [160, 64]
    open(f"{tall}/train/good/000.png", "wb").close()
    with pytest.raises(ValueError, match="000.png"):
        aspect_preserving_size(tall, 64)


def test_one_index_serves_the_prior_weight_the_aspect_the_datasets_and_the_fingerprint(volumes_dir, tmp_path):
    write_mvtec(str(tmp_path / "steel" / "strip"), n_train=4, size=40, width=100)
    index = DatasetIndex.build(str(tmp_path / "steel"), "strip")
    assert (index.root, index.layout, index.category) == (str(tmp_path / "steel" / "strip"), "mvtec", "strip")
    assert index.splits == index_dataset(index.root)[1]
    assert default_prior_weight(index) == 1.0 and aspect_preserving_size(index, 64) == [64, 160]
    assert index.fingerprint == dataset_fingerprint(index.root)
    recipe = Recipe(image_size=32, intensity="dtype")
    from_index = load_datasets(index, recipe, calibration_fraction=0.5)
    from_path = load_datasets(str(tmp_path / "steel"), recipe, calibration_fraction=0.5, category="strip")
    assert [s["image"].meta["filename_or_obj"] for s in from_index.test.data] == [
        s["image"].meta["filename_or_obj"] for s in from_path.test.data
    ]
    assert index.splits == index_dataset(index.root)[1]  # loading left the shared index as it was
    with pytest.raises(ValueError, match="give one of the two"):
        load_datasets(index, recipe, category="other")
    assert default_prior_weight(DatasetIndex.build(volumes_dir)) == 0.0


def test_index_mvtec(mvtec_dir):
    layout, splits = index_dataset(mvtec_dir)
    assert len(splits["train"]) == 12 and len(splits["test"]) == 8
    bad = [item for item in splits["test"] if item["label"]]
    assert len(bad) == 4 and all(item["mask"].endswith("_mask.png") for item in bad)
    assert all("mask" not in item for item in splits["test"] if not item["label"])


def test_index_bmad(bmad_dir):
    _, splits = index_dataset(bmad_dir)
    assert len(splits["train"]) == 10 and len(splits["valid"]) == 6 and len(splits["test"]) == 6
    assert all("/label/" in item["mask"] for item in splits["test"])


@pytest.mark.parametrize("layout", ["mvtec", "bmad", "volumes"])
def test_load_datasets_shapes(layout, mvtec_dir, bmad_dir, volumes_dir):
    root = {"mvtec": mvtec_dir, "bmad": bmad_dir, "volumes": volumes_dir}[layout]
    data = load_datasets(root, Recipe(image_size=32), calibration_fraction=0.34)
    sample = data.test[0]
    assert sample["image"].shape == (3, 32, 32) and sample["mask"].shape == (1, 32, 32)
    assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
    assert all(s["label"] == 0 for s in data.train.data + data.calibration.data)
    assert {s["label"] for s in data.test.data} == {0, 1}
    assert data.has_masks and data.counts["test"] == len(data.test)


def test_volume_training_slices_exclude_lesions(volumes_dir):
    data = load_datasets(volumes_dir, Recipe(image_size=16), calibration_fraction=0.34, min_foreground=0.0)
    # 3 train volumes x 12 slices, one volume with lesions on 3 slices, held out or not
    assert len(data.train) + len(data.calibration) == 3 * 12 - 3
    assert sum(s["label"] for s in data.test.data) == 2 * 3


def test_empty_train_good_fails(tmp_path):
    root = write_mvtec(str(tmp_path / "c"), n_train=1)
    os.remove(f"{root}/train/good/000.png")
    with pytest.raises(ValueError, match="no training images found in .*train/good"):
        index_dataset(root)


def test_missing_ground_truth_fails(tmp_path):
    root = write_mvtec(str(tmp_path / "c"))
    os.remove(f"{root}/ground_truth/scratch/001_mask.png")
    with pytest.raises(FileNotFoundError, match="scratch/001.png has no ground truth"):
        index_dataset(root)


def test_unreadable_image_is_named(tmp_path):
    root = write_mvtec(str(tmp_path / "c"))
    with open(f"{root}/train/good/003.png", "wb") as f:
        f.write(b"not a png")
    with pytest.raises(ValueError, match="cannot load .*003.png"):
        load_datasets(root, Recipe(image_size=16))


def test_mask_of_another_size_is_named(tmp_path):
    root = write_mvtec(str(tmp_path / "c"))
    from PIL import Image

    Image.new("L", (20, 20)).save(f"{root}/ground_truth/scratch/002_mask.png")
    with pytest.raises(ValueError, match="002_mask.png has size"):
        load_datasets(root, Recipe(image_size=16))


def test_volume_that_is_not_3d_is_named(tmp_path):
    root = write_volumes(str(tmp_path / "v"))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 3), np.float32), np.eye(4)), f"{root}/imagesTr/case1.nii.gz")
    shutil.copy(f"{root}/labelsTr/case0.nii.gz", f"{root}/labelsTr/case1.nii.gz")
    with pytest.raises(ValueError, match="case1.nii.gz"):
        load_datasets(root, Recipe(image_size=16), calibration_fraction=0.34)


def test_brain_demo_is_built_once(tmp_path):
    root = build_brain_demo(str(tmp_path / "demo"), n_train=2, n_test=2)
    _, splits = index_dataset(root)
    assert len(splits["train"]) == 2 and len(splits["test"]) == 2
    image = nib.load(splits["test"][1]["image"])
    mask = nib.load(splits["test"][1]["mask"]).get_fdata()
    assert image.shape == mask.shape == (99, 117, 95) and mask.sum() > 0
    # flat-topped lesions: no axial slice counts as anomalous for a lesion tip of a few voxels
    areas = mask.sum(axis=(0, 1))
    assert areas[areas > 0].min() >= 20
    stamp = os.path.getmtime(splits["test"][0]["image"])
    build_brain_demo(root, n_train=2, n_test=2)
    assert os.path.getmtime(splits["test"][0]["image"]) == stamp
    assert os.listdir(tmp_path) == ["demo"]  # no staging folder left


def test_categories(tmp_path):
    write_mvtec(str(tmp_path / "root" / "carpet"))
    write_mvtec(str(tmp_path / "root" / "wood"))
    (tmp_path / "root" / "notes").mkdir()
    root = str(tmp_path / "root")
    assert categories(root, "all") == ["carpet", "wood"]
    assert categories(root, ["wood"]) == ["wood"] and categories(root, None) == [""]
    with pytest.raises(FileNotFoundError, match="tile"):
        categories(root, "tile")
    data = load_datasets(root, Recipe(image_size=16), category="wood")
    assert len(data.test) == 8


def test_image_level_set_has_no_masks(tmp_path):
    root = write_mvtec(str(tmp_path / "xray"), masks=False)
    data = load_datasets(root, Recipe(image_size=16))
    assert not data.has_masks and all(s["mask"].sum() == 0 for s in data.test.data)


def test_non_square_images_pad_or_stretch(tmp_path):
    root = write_mvtec(str(tmp_path / "oct"), width=96)
    stretched = load_datasets(root, Recipe(image_size=32, resize_mode="stretch"))
    padded = load_datasets(root, Recipe(image_size=32, resize_mode="pad"))
    assert stretched.test[0]["image"].shape == padded.test[0]["image"].shape == (3, 32, 32)
    # 48x96 padded to 96x96: the top and bottom quarters are padding
    assert float(padded.test[0]["image"][:, :6].abs().max()) == 0.0
    assert float(stretched.test[0]["image"][:, :6].abs().max()) > 0.0


@pytest.mark.parametrize(
    "intensity, expected",
    [
        ("dtype", [0.2, 0.4, 0.8]),  # (51, 102, 204) / 255
        ("percentile", [0.0, 1 / 3, 1.0]),  # one low (51) and high (204) for the three channels together
    ],
)
def test_rgb_images_keep_their_colours(tmp_path, intensity, expected):
    from PIL import Image

    root = write_mvtec(str(tmp_path / "rgb"))
    path = f"{root}/train/good/000.png"
    Image.fromarray(np.full((48, 48, 3), (51, 102, 204), dtype=np.uint8)).save(path)
    data = load_datasets(root, Recipe(image_size=16, intensity=intensity), calibration_fraction=0.2)
    sample = next(s for s in data.train.data + data.calibration.data if s["image"].meta["filename_or_obj"] == path)
    assert torch.allclose(sample["image"][:, 8, 8], torch.tensor(expected), atol=1e-3)


def test_ct_volumes_with_organ_labels(tmp_path):
    root = write_ct_volumes(str(tmp_path / "liver"))
    data = load_datasets(
        root, Recipe(image_size=16, intensity="hu", organ_labels=[1], lesion_labels=[2]), min_foreground=0.05
    )
    # only the 6 liver slices of each volume are kept; outside the liver the image is zero
    assert len(data.test) == 2 * 6 and sum(s["label"] for s in data.test.data) == 2 * 2
    sample = data.test[0]["image"]
    assert float(sample[:, 0, 0].abs().max()) == 0.0 and float(sample.max()) > 0.3
    with pytest.warns(UserWarning, match="does not look like CT"):
        load_datasets(
            write_volumes(str(tmp_path / "mri")), Recipe(image_size=16, intensity="hu"), calibration_fraction=0.34
        )


def test_bundles_without_demo_fail_fast():
    with pytest.raises(ValueError, match="no embedded demo.*docs/README.md"):
        require_dataset_dir("mvtec", "bundles/mvtec/docs/README.md")


def test_inverted_masks_are_flagged_and_can_be_inverted(tmp_path, caplog):
    from PIL import Image

    root = write_mvtec(str(tmp_path / "paper"))
    for path in sorted((tmp_path / "paper" / "ground_truth" / "scratch").iterdir()):
        Image.fromarray(255 - np.array(Image.open(path))).save(path)  # PIPED style: defects black
    with caplog.at_level("WARNING"):
        data = load_datasets(root, Recipe(image_size=48))
    assert "look inverted" in caplog.text
    fixed = load_datasets(root, Recipe(image_size=48), invert_masks=True)
    bad = [s for s in fixed.test.data if s["label"]]
    assert all(float(s["mask"].sum()) == 100 for s in bad)  # the 10x10 defect
    assert all(float(s["mask"].sum()) == 48 * 48 - 100 for s in data.test.data if s["label"])


def test_test_split_without_anomalies_is_reported(tmp_path, caplog):
    root = write_mvtec(str(tmp_path / "only_good"), n_bad=0, masks=False)
    with caplog.at_level("WARNING"):
        load_datasets(root, Recipe(image_size=16))
    assert "holds only normal images" in caplog.text


def test_a_loaded_array_is_named_by_its_file_not_printed():
    from monai.data import MetaTensor

    from multiad_monai.data.datasets import apply_named

    def fail(item):
        raise ValueError("expected a 3D volume")

    image = MetaTensor(torch.zeros(2, 4, 4, 4), meta={"filename_or_obj": "/data/scan.nii.gz"})
    with pytest.raises(ValueError, match=r"^cannot load /data/scan.nii.gz: expected a 3D volume$"):
        apply_named(fail, {"image": image})
