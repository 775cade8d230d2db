"""Integration: the brain bundle's workflows on tiny seeded datasets.

Most run in-process through ``monai.bundle.run`` (what ``python -m monai.bundle run`` calls); the tests about
the command line itself (a failing run's output, torchrun) start real processes. Kill -9 and resume: test_faults.py.
"""

from __future__ import annotations

import json
import os
import sys

import mlflow
import pytest
import torch

from multiad_monai.checkpoint import load_model
from tests.bundles.helpers import ROOT, bundle_command, error_chain, run, run_in_process

pytestmark = pytest.mark.slow  # trains the bundle; runs the command line and torchrun

TINY = {"image_size": 32, "batch_size": 4, "num_overlays": 2, "max_iterations": 8}
TINY_ARGS = ["--image_size", "32", "--batch_size", "4", "--num_overlays", "2", "--max_iterations", "8"]
METRIC_KEYS = {
    "image_auroc",
    "pixel_auroc",
    "pixel_aupro",
    "image_f1_max",
    "train_seconds",
    "n_train",
    "n_test",
    "iterations",
    "stop_reason",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mvtec_dir):
    out = str(tmp_path_factory.mktemp("brain_run"))
    run_in_process("brain", "training", dataset_dir=mvtec_dir, output_dir=out, epochs=2, **TINY)
    return out


def test_training_writes_metrics_checkpoint_and_overlays(trained):
    metrics = json.load(open(os.path.join(trained, "metrics.json"), encoding="utf-8"))
    assert set(metrics) == METRIC_KEYS
    assert metrics["n_train"] + 2 == 12 and metrics["n_test"] == 8  # two normal images held out for calibration
    # --epochs 2 means two passes over the 10 training images in batches of 4 (the last one dropped), no rule
    assert metrics["iterations"] == 4 and metrics["stop_reason"] is None
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("image_auroc", "pixel_auroc", "pixel_aupro", "image_f1_max"))
    path = os.path.join(trained, "model.pt")  # ckpt_path defaults to <output_dir>/model.pt
    state = torch.load(path, weights_only=True)  # a plain state dict, as in the model zoo
    assert state["_extra_state"]["recipe"]["image_size"] == [32, 32]
    network = load_model(path)
    assert network.is_calibrated and network.recipe.image_size == (32, 32) and network.recipe.intensity == "percentile"
    assert sorted(os.listdir(os.path.join(trained, "overlays"))) == ["00_anomalous.png", "01_normal.png"]
    # the last two epochs: ignite removes the older one before writing a new one, so one always survives a kill
    checkpoints = sorted(os.listdir(os.path.join(trained, "checkpoints")))
    assert checkpoints == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"]


def test_training_logs_a_real_mlflow_run(trained):
    client = mlflow.MlflowClient(tracking_uri="sqlite:///" + os.path.join(trained, "mlruns.db"))
    experiment = client.get_experiment_by_name("multiad_brain")
    (run_,) = client.search_runs([experiment.experiment_id])
    assert run_.info.status == "FINISHED"
    params = run_.data.params
    assert params["teacher"] == "efficientnet-lite0" and params["epochs"] == "2" and params["bundle"] == "brain"
    assert params["image_size"] == "[32, 32]" and params["intensity"] == "percentile"
    assert {"distillation_loss", "image_auroc", "pixel_aupro"} <= set(run_.data.metrics)
    assert "discriminator_loss" not in run_.data.metrics  # pure distillation by default
    assert len(client.get_metric_history(run_.info.run_id, "distillation_loss")) >= 2
    assert "metrics.json" in {a.path for a in client.list_artifacts(run_.info.run_id)}
    assert len(client.list_artifacts(run_.info.run_id, "overlays")) == 2


def test_default_training_stops_by_the_held_out_rule(mvtec_dir, tmp_path):
    """Without --epochs the run ends when the student stops improving on the held-out images, within the budget,
    and says why; the rule's measurements are in the MLflow run. A student that cannot learn (learning rate 0)
    sets the best distance at the first check (iteration 2), fails to improve at the second and cools down for 1."""
    out = str(tmp_path)
    overrides = {**TINY, "max_iterations": 40, "learning_rate": 0.0}
    run_in_process("brain", "training", dataset_dir=mvtec_dir, output_dir=out, **overrides)
    metrics = json.load(open(os.path.join(out, "metrics.json"), encoding="utf-8"))
    assert metrics["iterations"] == 5 and "held-out distance" in metrics["stop_reason"], metrics
    client = mlflow.MlflowClient(tracking_uri="sqlite:///" + os.path.join(out, "mlruns.db"))
    (run_,) = client.search_runs([client.get_experiment_by_name("multiad_brain").experiment_id])
    assert run_.data.params["epochs"] == "None" and run_.data.params["max_iterations"] == "40"
    assert {"held_out_distance", "generalisation_gap"} <= set(run_.data.metrics)


def test_evaluate_rebuilds_the_recipe_from_the_checkpoint(trained, mvtec_dir, tmp_path):
    """No image size or intensity given: evaluation takes them from the checkpoint and reproduces training."""
    out = str(tmp_path)
    ckpt = os.path.join(trained, "model.pt")
    configs = ("train.json", "evaluate.json")
    run_in_process("brain", None, configs, dataset_dir=mvtec_dir, ckpt_path=ckpt, output_dir=out)
    evaluated = json.load(open(os.path.join(out, "metrics.json"), encoding="utf-8"))
    trained_metrics = json.load(open(os.path.join(trained, "metrics.json"), encoding="utf-8"))
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro"):
        assert evaluated[key] == pytest.approx(trained_metrics[key], abs=1e-6)
    assert {"per_image.csv", "roc_curve.png", "pro_curve.png", "worst_cases.png"} <= set(os.listdir(out))
    client = mlflow.MlflowClient(tracking_uri="sqlite:///" + os.path.join(out, "mlruns.db"))
    (run_,) = client.search_runs([client.get_experiment_by_name("multiad_brain").experiment_id])
    assert run_.data.params["mode"] == "evaluation" and run_.data.params["image_size"] == "[32, 32]"
    assert len(client.list_artifacts(run_.info.run_id, "evaluation")) == 4


@pytest.mark.parametrize(
    "configs, overrides, message",
    [
        (("train.json", "evaluate.json"), {"image_size": 64}, "image_size: given [64, 64], checkpoint [32, 32]"),
        (("train.json", "evaluate.json"), {"intensity": "hu"}, "intensity: given 'hu', checkpoint 'percentile'"),
        (("inference.json",), {"fusion": "product"}, "fusion: given 'product', checkpoint 'standardized'"),
    ],
)
def test_options_that_contradict_the_checkpoint_are_errors(trained, mvtec_dir, tmp_path, configs, overrides, message):
    ckpt = os.path.join(trained, "model.pt")
    args = {"dataset_dir": mvtec_dir} if "evaluate.json" in configs else {"input_path": mvtec_dir + "/test/good"}
    with pytest.raises(Exception) as error:
        run_in_process("brain", None, configs, ckpt_path=ckpt, output_dir=str(tmp_path / "out"), **args, **overrides)
    assert message in error_chain(error.value) and ckpt in error_chain(error.value)
    assert not os.path.exists(tmp_path / "out" / "metrics.json") and not os.path.exists(tmp_path / "out" / "scores.csv")


def test_inference_bundle_on_images_and_volumes(trained, mvtec_dir, volumes_dir, tmp_path):
    out = str(tmp_path / "predictions")
    ckpt = os.path.join(trained, "model.pt")
    for source in (os.path.join(mvtec_dir, "test", "scratch"), os.path.join(volumes_dir, "imagesTs")):
        run_in_process("brain", None, ("inference.json",), ckpt_path=ckpt, input_path=source, output_dir=out)
    names = set(os.listdir(out))
    assert {"000_map.npy", "000_overlay.png", "case0_map.nii.gz", "case0_overlay.png", "scores.csv"} <= names
    assert "case0_slices.csv" in names


def test_missing_dataset_dir_fails_before_training(tmp_path):
    command = bundle_command("brain", "training", str(tmp_path), *TINY_ARGS, "--dataset_dir", str(tmp_path / "nope"))
    result = run(command)
    assert result.returncode != 0
    assert "nope does not exist" in result.stderr
    assert not os.path.exists(os.path.join(tmp_path, "model.pt"))


def test_two_process_ddp_training_on_cpu(mvtec_dir, tmp_path):
    """torchrun, gloo, 2 ranks, stopped by the held-out rule: both finish at the same iteration, replicas stay
    identical, rank 0 alone writes outputs."""
    out = str(tmp_path)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533"]
    probe = os.path.join(ROOT, "tests", "bundles", "ddp_probe.json")  # each rank writes its parameter checksum
    args = [
        "--dataset_dir",
        mvtec_dir,
        "--max_iterations",
        "12",
        "--image_size",
        "32",
        "--batch_size",
        "2",
        "--num_overlays",
        "2",
        "--prior_reference",
        "nearest",  # rank 0 alone sizes the bank of normal features; the broadcast must resize rank 1's
    ]
    configs = ("train.json", "multi_gpu_train.json", probe)
    result = run(bundle_command("brain", "training", out, *args, configs=configs, launcher=launcher))
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    checksums = [open(os.path.join(out, f"student_checksum_rank{rank}.txt")).read() for rank in (0, 1)]
    assert checksums[0] == checksums[1]
    assert log.count("metrics written to") == 1
    assert set(json.load(open(os.path.join(out, "metrics.json"), encoding="utf-8"))) == METRIC_KEYS
    client = mlflow.MlflowClient(tracking_uri="sqlite:///" + os.path.join(out, "mlruns.db"))
    assert len(client.search_runs([client.get_experiment_by_name("multiad_brain").experiment_id])) == 1
    network = load_model(os.path.join(out, "model.pt"))  # no "module." prefixes
    assert network.is_calibrated
