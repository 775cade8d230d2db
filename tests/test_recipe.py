"""The recipe: validation, round trips, the two presets, checking given values, and one field list for the bundles."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os

import pytest
from monai.bundle import ConfigParser

from multiad_monai.engines import MultiADTrainer
from multiad_monai.recipe import PRESETS, Recipe, check_given
from tests.bundles.helpers import ROOT
from tests.conftest import write_mvtec, write_volumes

FIELDS = [f.name for f in dataclasses.fields(Recipe)]
DOMAINS = ["brain", "liver", "mvtec", "oct"]
PAPER = {"fusion": "sum", "prior_weight": 0.0, "prior_reference": "mean", "adaptive_prior": False}


def _json(*parts: str) -> dict:
    with open(os.path.join(ROOT, "bundles", *parts), encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"image_size": (32, 32, 32)}, "image_size"),
        ({"image_size": 0}, "image_size"),
        ({"intensity": "zscore"}, "intensity must be one of"),
        ({"resize_mode": "crop"}, "resize_mode must be one of"),
        ({"slice_axcodes": "RAS"}, "slices are cut in PLS"),
        ({"slice_axis": 0}, "slices are cut in PLS"),
        ({"prior_reference": "median"}, "prior_reference must be one of"),
        ({"prior_weight": -1}, "prior_weight must be >= 0"),
        ({"percentiles": (99.0, 1.0)}, "percentiles must be"),
        ({"hu_window": (100, 100)}, "hu_window must be"),
    ],
)
def test_bad_values_name_the_key(changes, message):
    with pytest.raises(ValueError, match=message):
        Recipe(**changes)


def test_json_values_are_normalised_and_round_trip():
    recipe = Recipe(image_size=64, percentiles=[1, 99], layers=[], organ_labels=[], lesion_labels=[2, 3], sigma=2)
    assert recipe.image_size == (64, 64) and recipe.percentiles == (1.0, 99.0) and recipe.sigma == 2.0
    assert recipe.layers is None and recipe.organ_labels is None and recipe.lesion_labels == (2, 3)
    values = recipe.to_dict()
    assert json.loads(json.dumps(values)) == values and set(values) == set(FIELDS)
    assert Recipe.from_dict(values) == recipe
    assert recipe.differences(recipe.replace(sigma=3)) == {"sigma": (2.0, 3.0)}


def test_from_dict_names_unknown_keys_and_fills_missing_ones_with_the_paper_s():
    with pytest.raises(ValueError, match=r"old.pt holds unknown recipe keys \['colour'\]"):
        Recipe.from_dict({"colour": 1}, "old.pt")
    # a checkpoint written before the prior existed had it off: it must not switch on when read back
    added_later = ("prior_weight", "prior_reference", "adaptive_prior")
    old = {k: v for k, v in Recipe(image_size=32, fusion="standardized").to_dict().items() if k not in added_later}
    assert Recipe.from_dict(old) == Recipe.paper(image_size=32, fusion="standardized")


def test_presets():
    assert PRESETS == ("project", "paper")
    assert Recipe.preset("project") == Recipe()
    assert Recipe.preset("paper") == Recipe.paper()
    assert Recipe().differences(Recipe.paper()) == {k: (getattr(Recipe(), k), v) for k, v in PAPER.items()}
    assert Recipe.paper(image_size=32, fusion="product") == Recipe(image_size=32, **{**PAPER, "fusion": "product"})
    with pytest.raises(ValueError, match="preset must be one of"):
        Recipe.preset("mine")


def test_check_given_accepts_agreeing_and_unset_values_and_names_contradictions():
    recipe = Recipe(image_size=32, prior_reference="nearest")
    assert check_given(recipe, {"image_size": [32, 32], "fusion": None}, "m.pt") is recipe
    with pytest.raises(ValueError, match=r"in m.pt \(prior_reference: given 'mean', checkpoint 'nearest'\)"):
        check_given(recipe, {"prior_reference": "mean"}, "m.pt")
    with pytest.raises(ValueError, match="unknown recipe key"):
        check_given(recipe, {"colour": 1}, "m.pt")


# --- one field list: a field added to Recipe and not to every bundle file fails here ---------------------------


@pytest.mark.parametrize("bundle", ["common", *DOMAINS])
def test_every_field_is_a_training_key(bundle):
    config = _json(bundle, "train.json")
    per_domain = {"image_size", "intensity"} if bundle == "common" else set()  # each domain bundle sets them
    assert set(FIELDS) - set(config) == per_domain
    assert set(_json("common", "train.json")["recipe"]) - {"_target_"} == set(FIELDS)


@pytest.mark.parametrize("name", ["evaluate.json", "inference.json"])
def test_every_field_can_be_given_to_evaluation_and_inference(name):
    for bundle in ["common", *DOMAINS]:
        config = _json(bundle, name)
        assert {k: config[k] for k in FIELDS} == dict.fromkeys(FIELDS)  # None: take the checkpoint's
        assert config["recipe_given"] == {k: f"@{k}" for k in FIELDS}
    assert "**@recipe_given" in json.dumps(config)


@pytest.mark.parametrize("key, value", [("prior_reference", "nearest"), ("adaptive_prior", False)])
def test_a_key_given_to_evaluation_reaches_the_check(key, value, monkeypatch):
    monkeypatch.chdir(ROOT)  # the bundles' macros name bundles/common/... relative to the repository root
    parser = ConfigParser()
    parser.read_config(["bundles/mvtec/train.json", "bundles/mvtec/evaluate.json"])
    parser.update({key: value})
    given = parser.get_parsed_content("recipe_given")
    assert {k: v for k, v in given.items() if v is not None} == {key: value}


# --- one set of defaults ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe_data")
    return {"images": write_mvtec(str(root / "images")), "volumes": write_volumes(str(root / "volumes"))}


def _resolve(bundle: str, dataset: str, keys: list[str], **overrides):
    parser = ConfigParser()
    parser.read_config(f"bundles/{bundle}/train.json")
    parser.update({"dataset_dir": dataset, **overrides})
    return [parser.get_parsed_content(key) for key in keys]


@pytest.mark.parametrize("bundle", DOMAINS)
def test_the_bundles_start_from_the_recipe_s_and_the_trainer_s_defaults(bundle, datasets, monkeypatch):
    monkeypatch.chdir(ROOT)
    trainer_defaults = inspect.signature(MultiADTrainer).parameters
    recipe, adversarial_weight = _resolve(bundle, datasets["images"], ["recipe", "adversarial_weight"])
    assert adversarial_weight == trainer_defaults["adversarial_weight"].default
    defaults = Recipe(image_size=recipe.image_size, intensity=recipe.intensity, sigma=recipe.sigma)
    domain = {"percentiles", "resize_mode"}  # the oct bundle's own
    assert set(recipe.differences(defaults)) <= domain
    (volumes,) = _resolve(bundle, datasets["volumes"], ["recipe"])
    assert volumes.prior_weight == 0.0  # the prior needs images aligned location by location


@pytest.mark.parametrize("bundle", DOMAINS)
def test_preset_paper_switches_the_bundle_to_the_paper_s_model(bundle, datasets, monkeypatch):
    monkeypatch.chdir(ROOT)
    recipe, adversarial_weight = _resolve(bundle, datasets["images"], ["recipe", "adversarial_weight"], preset="paper")
    assert adversarial_weight == 0.1
    assert recipe == Recipe.paper(
        image_size=recipe.image_size,
        intensity=recipe.intensity,
        percentiles=recipe.percentiles,
        resize_mode=recipe.resize_mode,
    )
    (explicit,) = _resolve(bundle, datasets["images"], ["recipe"], preset="paper", fusion="product", sigma=2)
    assert (explicit.fusion, explicit.sigma, explicit.prior_weight) == ("product", 2.0, 0.0)
