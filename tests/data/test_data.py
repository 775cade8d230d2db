from __future__ import annotations

import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from multiad_monai.data import build_brain_demo, detect_layout, index_dataset, load_datasets
from tests.conftest import write_mvtec, write_volumes


def test_detect_layouts(mvtec_dir, bmad_dir, volumes_dir, tmp_path):
    assert detect_layout(mvtec_dir) == "mvtec"
    assert detect_layout(bmad_dir) == "bmad"
    assert detect_layout(volumes_dir) == "volumes"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        detect_layout(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="cannot tell the layout"):
        detect_layout(str(tmp_path))


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
    data = load_datasets(root, image_size=32, calibration_fraction=0.34)
    sample = data.test[0]
    assert sample["image"].shape == (3, 32, 32) and sample["mask"].shape == (1, 32, 32)
    assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
    assert all(s["label"] == 0 for s in data.train.data + data.calibration.data)
    assert {s["label"] for s in data.test.data} == {0, 1}
    assert data.has_masks and data.counts["test"] == len(data.test)


def test_volume_training_slices_exclude_lesions(volumes_dir):
    data = load_datasets(volumes_dir, image_size=16, calibration_fraction=0.34, min_foreground=0.0)
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
        load_datasets(root, image_size=16)


def test_mask_of_another_size_is_named(tmp_path):
    root = write_mvtec(str(tmp_path / "c"))
    from PIL import Image

    Image.new("L", (20, 20)).save(f"{root}/ground_truth/scratch/002_mask.png")
    with pytest.raises(ValueError, match="002_mask.png has size"):
        load_datasets(root, image_size=16)


def test_volume_that_is_not_3d_is_named(tmp_path):
    root = write_volumes(str(tmp_path / "v"))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 3), np.float32), np.eye(4)), f"{root}/imagesTr/case1.nii.gz")
    shutil.copy(f"{root}/labelsTr/case0.nii.gz", f"{root}/labelsTr/case1.nii.gz")
    with pytest.raises(ValueError, match="case1.nii.gz"):
        load_datasets(root, image_size=16, calibration_fraction=0.34)


def test_brain_demo_is_built_once(tmp_path):
    root = build_brain_demo(str(tmp_path / "demo"), n_train=2, n_test=2)
    _, splits = index_dataset(root)
    assert len(splits["train"]) == 2 and len(splits["test"]) == 2
    image = nib.load(splits["test"][1]["image"])
    mask = nib.load(splits["test"][1]["mask"]).get_fdata()
    assert image.shape == mask.shape == (99, 117, 95) and mask.sum() > 0
    stamp = os.path.getmtime(splits["test"][0]["image"])
    build_brain_demo(root, n_train=2, n_test=2)
    assert os.path.getmtime(splits["test"][0]["image"]) == stamp
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".demo-")]
