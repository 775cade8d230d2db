"""The recipe travels inside the checkpoint: round trip, contradictions, pre-recipe checkpoints and their upgrade."""

from __future__ import annotations

import os

import pytest
import torch

from multiad_monai.checkpoint import load_model, main, read_recipe
from multiad_monai.networks import MultiAD
from multiad_monai.recipe import Recipe
from tests.bundles.helpers import ROOT

RECIPE = Recipe.paper(image_size=(32, 48), intensity="hu", hu_window=(-100, 200), resize_mode="pad", fusion="product")


def _calibrated(recipe: Recipe) -> MultiAD:
    torch.manual_seed(0)
    network = MultiAD(recipe)
    network.normalizer.fit_thresholds(torch.rand(4) + 1, torch.rand(4, 1, *recipe.image_size))
    return network


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("ckpt") / "model.pt")
    torch.save(_calibrated(RECIPE).state_dict(), path)
    return path


def test_recipe_round_trips_through_a_weights_only_checkpoint(checkpoint):
    state = torch.load(checkpoint, weights_only=True)
    assert Recipe.from_dict(state["_extra_state"]["recipe"]) == RECIPE
    network = load_model(checkpoint)
    assert network.recipe == RECIPE and network.anomaly_map.fusion == "product" and network.is_calibrated
    reference = _calibrated(RECIPE).eval()
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(network(x).anomaly_map, reference(x).anomaly_map)


@pytest.mark.parametrize(
    "given, message",
    [
        ({"image_size": 64}, "image_size: given [64, 64], checkpoint [32, 48]"),
        ({"intensity": "percentile", "sigma": 2}, "intensity: given 'percentile', checkpoint 'hu'; sigma: given 2.0"),
        ({"resize_mode": "stretch"}, "resize_mode: given 'stretch', checkpoint 'pad'"),
    ],
)
def test_given_values_that_contradict_the_checkpoint_name_both(checkpoint, given, message):
    with pytest.raises(ValueError, match="contradict the recipe stored in") as error:
        load_model(checkpoint, **given)
    assert message in str(error.value) and checkpoint in str(error.value)


def test_given_values_that_agree_or_are_unset_are_accepted(checkpoint):
    recipe = read_recipe(checkpoint, image_size=[32, 48], intensity="hu", fusion=None, teacher=None)
    assert recipe == RECIPE


def test_loading_into_a_network_of_another_recipe_is_refused(checkpoint):
    with pytest.raises(ValueError, match="another recipe .*image_size"):
        MultiAD(Recipe.paper(image_size=32)).load_state_dict(torch.load(checkpoint, weights_only=True))


@pytest.fixture
def old_checkpoint(tmp_path) -> str:
    """A checkpoint as the first release wrote it: no recipe, an ``input_size`` buffer."""
    state = _calibrated(Recipe.paper(image_size=32, intensity="dtype")).state_dict()
    del state["_extra_state"]
    state["input_size"] = torch.tensor([32, 32])
    path = str(tmp_path / "old.pt")
    torch.save(state, path)
    return path


def test_pre_recipe_checkpoint_gets_a_message_saying_what_to_do(old_checkpoint):
    with pytest.raises(ValueError) as error:
        load_model(old_checkpoint)
    assert "written before checkpoints carried their recipe" in str(error.value)
    assert f"python -m multiad_monai.checkpoint --ckpt_path {old_checkpoint}" in str(error.value)


def test_upgrade_takes_the_recipe_from_the_bundle_config(old_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the bundle configs name bundles/common/... from the repository root
    new = str(tmp_path / "new.pt")
    config = os.path.join("bundles", "mvtec", "train.json")
    with pytest.raises(SystemExit):  # the checkpoint was calibrated at 32 px; the bundle says 256
        main(["--ckpt_path", old_checkpoint, "--output", new, "--config_file", config])
    assert "calibrated at image_size (32, 32)" in capsys.readouterr().err and not os.path.exists(new)
    main(["--ckpt_path", old_checkpoint, "--output", new, "--config_file", config, "--image_size", "32"])
    network = load_model(new)
    assert network.recipe.image_size == (32, 32) and network.recipe.intensity == "dtype"
    old = torch.load(old_checkpoint, weights_only=True)
    assert torch.equal(network.state_dict()["normalizer.score_mean"], old["normalizer.score_mean"])


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04truncated"])
def test_corrupt_checkpoint_names_the_file(tmp_path, content):
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{path} cannot be read as a weights-only state dict"):
        load_model(str(path))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("student.stages.s1.1._bn0.running_var", float("inf"), "non-finite values in 1 tensor (student.stages.s1.1"),
        ("student.stages.s2.3._bn0.weight", float("nan"), "diverged in training and cannot be used"),
        ("normalizer.pixel_std", float("inf"), "non-finite calibration values in 1 tensor (normalizer.pixel_std)"),
    ],
)
def test_checkpoint_with_non_finite_tensors_is_refused(checkpoint, tmp_path, key, value, message):
    state = torch.load(checkpoint, weights_only=True)
    state[key].view(-1)[0] = value
    path = str(tmp_path / "diverged.pt")
    torch.save(state, path)
    with pytest.raises(ValueError) as error:
        load_model(path)
    assert message in str(error.value) and path in str(error.value)
