"""Integration: the mvtec, liver and oct bundles train from their own configs (in-process), and fail fast
without data (command line)."""

from __future__ import annotations

import json

import mlflow
import pytest
from monai.bundle import ConfigParser

from multiad_monai.checkpoint import load_model
from tests.bundles.helpers import ROOT, bundle_command, run, run_in_process
from tests.conftest import write_ct_volumes, write_mvtec

pytestmark = pytest.mark.slow  # trains each domain's bundle

TINY = {"epochs": 1, "image_size": 32, "batch_size": 4, "num_overlays": 2, "max_iterations": 8}
PIXEL = {"pixel_auroc", "pixel_aupro"}


@pytest.mark.parametrize(
    "bundle, image_size, sigma",
    [
        ("mvtec", None, 4.0),
        ("mvtec", 128, 2.0),
        ("mvtec", [128, 384], 2.0),
        ("brain", None, 6.0),
        ("brain", [128, 96], 3.0),
    ],
)
def test_sigma_follows_the_short_side_of_image_size(bundle, image_size, sigma, monkeypatch):
    monkeypatch.chdir(ROOT)  # the bundles' macros name bundles/common/... relative to the repository root
    parser = ConfigParser()
    parser.read_config(f"bundles/{bundle}/train.json")
    if image_size is not None:
        parser.update({"image_size": image_size})
    assert parser.get_parsed_content("sigma") == sigma


@pytest.mark.parametrize("bundle", ["mvtec", "liver", "oct"])
def test_no_dataset_dir_fails_fast_with_instructions(bundle, tmp_path):
    result = run(bundle_command(bundle, "training", str(tmp_path), "--epochs", "1"))
    assert result.returncode != 0
    assert f"the {bundle} bundle has no embedded demo" in result.stderr
    assert f"bundles/{bundle}/docs/README.md" in result.stderr


def test_mvtec_category_and_image_level_set(tmp_path):
    root = tmp_path / "piped"
    write_mvtec(str(root / "paper_a"))
    write_mvtec(str(root / "xray"), masks=False, width=96)
    run_in_process(
        "mvtec", "training", dataset_dir=str(root), category="paper_a", output_dir=str(tmp_path / "a"), **TINY
    )
    assert PIXEL <= set(json.load(open(tmp_path / "a" / "metrics.json", encoding="utf-8")))
    assert load_model(str(tmp_path / "a" / "model.pt")).recipe.intensity == "dtype"
    run_in_process("mvtec", "training", dataset_dir=str(root), category="xray", output_dir=str(tmp_path / "x"), **TINY)
    metrics = json.load(open(tmp_path / "x" / "metrics.json", encoding="utf-8"))
    assert "image_auroc" in metrics and not PIXEL & set(metrics)  # absent, not zero
    assert load_model(str(tmp_path / "x" / "model.pt")).recipe.image_size == (32, 64)  # 48x96 keeps its aspect


def test_liver_bundle_on_raw_ct_volumes(tmp_path):
    root = write_ct_volumes(str(tmp_path / "ct"))
    out = str(tmp_path / "out")
    overrides = {"intensity": "hu", "organ_labels": [1], "lesion_labels": [2], "calibration_fraction": 0.5}
    run_in_process("liver", "training", dataset_dir=root, output_dir=out, **overrides, **TINY)
    metrics = json.load(open(tmp_path / "out" / "metrics.json", encoding="utf-8"))
    assert metrics["n_test"] == 12 and PIXEL <= set(metrics)
    recipe = load_model(out + "/model.pt").recipe
    assert recipe.intensity == "hu" and recipe.organ_labels == (1,) and recipe.hu_window == (-200.0, 250.0)


def test_oct_bundle_pads_wide_scans(tmp_path):
    root = write_mvtec(str(tmp_path / "oct"), width=96)
    run_in_process("oct", "training", dataset_dir=root, output_dir=str(tmp_path / "out"), **TINY)
    assert json.load(open(tmp_path / "out" / "metrics.json", encoding="utf-8"))["n_test"] == 8
    client = mlflow.MlflowClient(tracking_uri="sqlite:///" + str(tmp_path / "out" / "mlruns.db"))
    (run_,) = client.search_runs([client.get_experiment_by_name("multiad_oct").experiment_id])
    assert run_.data.params["resize_mode"] == "pad" and run_.data.params["percentiles"] == "[1.0, 99.0]"
    assert load_model(str(tmp_path / "out" / "model.pt")).recipe.resize_mode == "pad"
