from __future__ import annotations

import csv
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from multiad_monai.inference import AnomalyInferer, list_inputs
from multiad_monai.networks import MultiAD
from multiad_monai.recipe import Recipe


@pytest.fixture(scope="module")
def inferer():
    torch.manual_seed(0)
    network = MultiAD(Recipe.paper(image_size=32))
    network.normalizer.fit_thresholds(torch.rand(8) + 1.0, torch.rand(8, 1, 32, 32))
    return AnomalyInferer(network, batch_size=3)


def _images(folder) -> list[str]:
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    specs = {
        "grey8.png": (rng.random((40, 56)) * 255).astype(np.uint8),
        "grey16.png": (rng.random((33, 33)) * 65535).astype(np.uint16),
        "rgb.jpg": (rng.random((48, 30, 3)) * 255).astype(np.uint8),
        "rgba.png": (rng.random((20, 24, 4)) * 255).astype(np.uint8),
    }
    for name, array in specs.items():
        Image.fromarray(array).save(os.path.join(folder, name))
    return sorted(os.path.join(folder, n) for n in specs)


def test_2d_inputs_give_maps_overlays_and_csv(inferer, tmp_path):
    paths = _images(tmp_path / "in")
    rows = inferer(str(tmp_path / "in"), str(tmp_path / "out"))
    assert [r["image"] for r in rows] == paths
    sizes = {"grey8": (40, 56), "grey16": (33, 33), "rgb": (48, 30), "rgba": (20, 24)}
    for stem, size in sizes.items():
        assert np.load(tmp_path / "out" / f"{stem}_map.npy").shape == size
        assert Image.open(tmp_path / "out" / f"{stem}_overlay.png").size == size[::-1]
    with open(tmp_path / "out" / "scores.csv", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [r["image"] for r in table] == paths
    for r in table:
        assert 0.0 <= float(r["normalized_score"]) <= 1.0 and r["is_anomalous"] == str(
            int(float(r["normalized_score"]) > 0.5)
        )


def _volume(path, data, affine):
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), path)
    return path


def test_volume_map_keeps_shape_affine_and_alignment(inferer, tmp_path):
    """A volume stored LPS-flipped and axis-permuted must give the same map, voxel for voxel, as the same
    anatomy stored in RAS: the map is aligned with its input."""
    rng = np.random.default_rng(1)
    ras = rng.random((20, 18, 6))
    ras[5:9, 4:8, 2:4] += 2.0
    ras_affine = np.diag([2.0, 2.0, 3.0, 1.0])
    # same anatomy: flip x and y (LPS), then swap the first two array axes
    other = np.transpose(ras[::-1, ::-1, :], (1, 0, 2))
    flip = np.array([[-1, 0, 0, 19], [0, -1, 0, 17], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    swap = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    other_affine = ras_affine @ flip @ swap
    folder = tmp_path / "vols"
    folder.mkdir()
    _volume(str(folder / "ras.nii.gz"), ras, ras_affine)
    _volume(str(folder / "other.nii.gz"), other, other_affine)
    rows = inferer(str(folder), str(tmp_path / "out"))
    map_ras = nib.load(tmp_path / "out" / "ras_map.nii.gz")
    map_other = nib.load(tmp_path / "out" / "other_map.nii.gz")
    assert map_other.shape == other.shape and np.allclose(map_other.affine, other_affine)
    assert map_ras.shape == ras.shape and np.allclose(map_ras.affine, ras_affine)
    canonical = nib.as_closest_canonical(map_other).get_fdata()
    assert np.allclose(canonical, map_ras.get_fdata(), atol=1e-5)
    assert rows[0]["top_slices"] and len(rows[0]["top_slices"].split(";")) == 3
    assert os.path.isfile(tmp_path / "out" / "other_overlay.png")


@pytest.mark.parametrize("bad", ["4d", "unreadable"])
def test_bad_input_names_the_file_and_writes_nothing(inferer, tmp_path, bad):
    folder = tmp_path / "in"
    _images(folder)
    if bad == "4d":
        name = "series.nii.gz"
        _volume(str(folder / name), np.zeros((8, 8, 4, 3)), np.eye(4))
    else:
        name = "broken.png"
        (folder / name).write_bytes(b"not an image")
    with pytest.raises(Exception, match=name):
        inferer(str(folder), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")
    assert [p for p in os.listdir(tmp_path) if p != "in"] == []


def test_inputs_and_calibration_are_checked(tmp_path):
    with pytest.raises(ValueError, match="input_path is required"):
        list_inputs(None)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_inputs(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="no image or volume files"):
        list_inputs(str(tmp_path))
    with pytest.raises(ValueError, match="not calibrated"):
        AnomalyInferer(MultiAD(Recipe.paper()))


def test_a_batch_the_model_was_not_trained_for_is_refused_or_warned_about(inferer):
    """The eager path runs the exported model's input check (multiad_monai.networks.inputs.check_images)."""
    maps, scores = inferer.predict_samples([{"image": MetaTensor(torch.rand(1, 32, 32))}])
    assert maps.shape == (1, 1, 32, 32) and scores.shape == (1,)
    with pytest.raises(ValueError, match=r"shape \(N, 3, 32, 32\).*got 48 x 48: the model was trained"):
        inferer.predict_samples([{"image": MetaTensor(torch.rand(1, 48, 48))}])
    with pytest.warns(UserWarning, match=r"got values in \[0.0, 200.0\]: scale the intensities"):
        inferer.predict_samples([{"image": MetaTensor(torch.eye(32)[None] * 200)}])
