"""One preprocessing definition, one slice convention: evaluation and inference see the same pixels, and a model
trained on data_prep's PNG slices scores the original NIfTI exactly as it scores those PNGs."""

from __future__ import annotations

import csv
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from data_prep.common import iter_axial_slices, load_volume, write_png
from multiad_monai.checkpoint import load_model
from multiad_monai.data import load_datasets
from multiad_monai.inference import AnomalyInferer
from multiad_monai.networks import MultiAD
from multiad_monai.recipe import Recipe
from multiad_monai.transforms import network_input
from tests.bundles.helpers import run_in_process
from tests.conftest import write_mvtec, write_volumes
from tests.nifti import store_as


def _calibrated(recipe: Recipe) -> MultiAD:
    torch.manual_seed(0)
    network = MultiAD(recipe)
    network.normalizer.fit_thresholds(torch.rand(4) + 1, torch.rand(4, 1, *recipe.image_size))
    return network.eval()


def _evaluation_outputs(network: MultiAD, samples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images = torch.stack([network_input()(s)["image"].as_tensor() for s in samples])
    with torch.no_grad():
        result = network(images)
    return images, result.anomaly_map, result.pred_score


@pytest.mark.parametrize("resize_mode", ["stretch", "pad"])
def test_2d_image_gives_the_same_input_map_and_score_in_evaluation_and_inference(tmp_path, resize_mode):
    root = write_mvtec(str(tmp_path / "set"), n_train=4, n_good=1, n_bad=1, size=40, width=56)
    recipe = Recipe.paper(image_size=32, intensity="dtype", resize_mode=resize_mode)
    network = _calibrated(recipe)
    data = load_datasets(root, recipe, calibration_fraction=0.5)
    sample = data.test.data[-1]  # the anomalous image
    path = sample["image"].meta["filename_or_obj"]
    images, maps, scores = _evaluation_outputs(network, [sample])

    inferer = AnomalyInferer(network, batch_size=2)
    resized = inferer.resize(inferer.image_chain({"image": path, "path": path}))
    inferred_maps, inferred_scores = inferer.predict_samples([resized])
    torch.testing.assert_close(network_input()(resized)["image"].as_tensor()[None], images, atol=1e-6, rtol=0)
    torch.testing.assert_close(inferred_maps, maps, atol=1e-5, rtol=0)
    (_, _, restored, score) = next(inferer.predict_images([path]))
    assert score == pytest.approx(float(scores[0]), abs=1e-5) and restored.shape == (40, 56)


def test_3d_volume_gives_the_same_slices_maps_and_scores_in_evaluation_and_inference(tmp_path):
    root = write_volumes(str(tmp_path / "vols"), n_train=3, n_test=1)
    recipe = Recipe.paper(image_size=32, intensity="percentile")
    network = _calibrated(recipe)
    data = load_datasets(root, recipe, calibration_fraction=0.34, min_foreground=0.0)
    _, maps, scores = _evaluation_outputs(network, data.test.data)

    inferer = AnomalyInferer(network, batch_size=5)
    volume = os.path.join(root, "imagesTs", "case0.nii.gz")
    prediction = inferer.predict_volume(volume)
    np.testing.assert_allclose(prediction.slice_scores, scores.numpy(), atol=1e-5, rtol=0)
    slices = inferer.slicer(inferer.volume_chain({"image": volume}))
    inferred_maps, _ = inferer.predict_samples([inferer.slice_chain(s) for s in slices])
    torch.testing.assert_close(inferred_maps, maps, atol=1e-5, rtol=0)
    assert prediction.anomaly_map.shape == nib.load(volume).shape


def _uint8_head(rng: np.random.Generator, lesion: bool) -> np.ndarray:
    """An RAS uint8 'head': a textured ellipsoid, optionally with a bright lesion on the patient's right."""
    x, y, z = np.meshgrid(np.linspace(-1, 1, 40), np.linspace(-1, 1, 36), np.linspace(-1, 1, 8), indexing="ij")
    head = (x**2 + y**2 < 0.8).astype(float) * (90 + 30 * np.sin(6 * y) + rng.normal(0, 8, x.shape))
    if lesion:
        head[6:12, 14:20, 3:6] = 240  # x index small = patient right in RAS
    return np.clip(head, 0, 255).astype(np.uint8)


@pytest.mark.slow
def test_model_trained_on_data_prep_pngs_scores_the_original_nifti_like_the_pngs(tmp_path):
    """data_prep cuts a volume stored LPS with swapped axes into PNGs; a model trained on such PNGs then scores
    the NIfTI through inference.json with the same per-slice scores as the PNG slices."""
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 4.0, 1.0])
    root, volumes = tmp_path / "prepared", tmp_path / "nifti"
    volumes.mkdir()
    for case in range(4):
        data, stored_affine = store_as(_uint8_head(rng, lesion=case == 3), affine, (1, 0, 2), (True, True, False))
        path = str(volumes / f"case{case}.nii.gz")
        nib.save(nib.Nifti1Image(data, stored_affine), path)
        image = load_volume(path)
        for k, image_slice, _ in iter_axial_slices(image, np.zeros_like(image), path=path):
            split = "test/good" if case == 3 else "train/good"
            write_png(str(root / split / f"case{case}_{k:03d}.png"), image_slice)
    out = str(tmp_path / "run")
    overrides = {"intensity": "dtype", "min_foreground": 0.0, "calibration_fraction": 0.3}
    run_in_process(
        "brain",
        "training",
        dataset_dir=str(root),
        output_dir=out,
        epochs=1,
        image_size=32,
        max_iterations=8,
        **overrides,
    )
    ckpt = os.path.join(out, "model.pt")
    assert load_model(ckpt).recipe.intensity == "dtype"

    predictions = str(tmp_path / "predictions")
    for source in (str(volumes / "case3.nii.gz"), str(root / "test" / "good")):
        run_in_process("brain", None, ("inference.json",), ckpt_path=ckpt, input_path=source, output_dir=predictions)
    with open(os.path.join(predictions, "scores.csv"), encoding="utf-8") as f:
        png_scores = {os.path.basename(r["image"]): float(r["score"]) for r in csv.DictReader(f)}
    with open(os.path.join(predictions, "case3_slices.csv"), encoding="utf-8") as f:
        slice_scores = {int(r["slice"]): float(r["score"]) for r in csv.DictReader(f)}
    assert len(slice_scores) == 8 and set(png_scores) == {f"case3_{k:03d}.png" for k in range(8)}
    for k, score in slice_scores.items():
        assert score == pytest.approx(png_scores[f"case3_{k:03d}.png"], abs=1e-4)
