"""Integration: the mvtec, liver and oct bundles train and evaluate from their own commands."""

from __future__ import annotations

import json

import mlflow
import pytest

from tests.bundles.helpers import bundle_command, run
from tests.conftest import write_ct_volumes, write_mvtec

TINY = ["--epochs", "1", "--image_size", "32", "--batch_size", "4", "--num_overlays", "2"]
PIXEL = {"pixel_auroc", "pixel_aupro"}


def run_training(bundle: str, out: str, *args: str):
    return run(bundle_command(bundle, "training", out, *TINY, *args))


@pytest.mark.parametrize("bundle", ["mvtec", "liver", "oct"])
def test_no_dataset_dir_fails_fast_with_instructions(bundle, tmp_path):
    result = run_training(bundle, str(tmp_path))
    assert result.returncode != 0
    assert f"the {bundle} bundle has no embedded demo" in result.stderr
    assert f"bundles/{bundle}/docs/README.md" in result.stderr


def test_mvtec_category_and_image_level_set(tmp_path):
    root = tmp_path / "piped"
    write_mvtec(str(root / "paper_a"))
    write_mvtec(str(root / "xray"), masks=False, width=64)
    result = run_training("mvtec", str(tmp_path / "a"), "--dataset_dir", str(root), "--category", "paper_a")
    assert result.returncode == 0, result.stderr[-3000:]
    assert PIXEL <= set(json.load(open(tmp_path / "a" / "metrics.json")))
    result = run_training("mvtec", str(tmp_path / "x"), "--dataset_dir", str(root), "--category", "xray")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(tmp_path / "x" / "metrics.json"))
    assert "image_auroc" in metrics and not PIXEL & set(metrics)  # absent, not zero


def test_liver_bundle_on_raw_ct_volumes(tmp_path):
    root = write_ct_volumes(str(tmp_path / "ct"))
    result = run_training(
        "liver",
        str(tmp_path / "out"),
        "--dataset_dir",
        root,
        "--intensity",
        "hu",
        "--organ_labels",
        "[1]",
        "--lesion_labels",
        "[2]",
        "--calibration_fraction",
        "0.5",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(tmp_path / "out" / "metrics.json"))
    assert metrics["n_test"] == 12 and PIXEL <= set(metrics)


def test_oct_bundle_pads_wide_scans(tmp_path):
    root = write_mvtec(str(tmp_path / "oct"), width=96)
    result = run_training("oct", str(tmp_path / "out"), "--dataset_dir", root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.load(open(tmp_path / "out" / "metrics.json"))["n_test"] == 8
    client = mlflow.MlflowClient(tracking_uri="sqlite:///" + str(tmp_path / "out" / "mlruns.db"))
    (run,) = client.search_runs([client.get_experiment_by_name("multiad_oct").experiment_id])
    assert run.data.params["resize_mode"] == "pad" and run.data.params["intensity"] == "percentile"
