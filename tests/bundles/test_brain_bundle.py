"""Integration: the brain bundle's own `python -m monai.bundle run ...` commands on tiny seeded datasets."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import mlflow
import pytest
import torch

from multiad_monai.handlers import last_checkpoint
from multiad_monai.networks import MultiAD
from tests.bundles.helpers import ROOT, bundle_command, run

TINY = ["--image_size", "32", "--batch_size", "4", "--num_overlays", "2"]
METRIC_KEYS = {"image_auroc", "pixel_auroc", "pixel_aupro", "image_f1_max", "train_seconds", "n_train", "n_test"}


def run_bundle(run_id: str, out: str, *args: str, configs=("train.json",)) -> subprocess.CompletedProcess:
    return run(bundle_command("brain", run_id, out, *TINY, *args, configs=configs))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mvtec_dir):
    out = str(tmp_path_factory.mktemp("brain_run"))
    result = run_bundle("training", out, "--dataset_dir", mvtec_dir, "--epochs", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_training_writes_metrics_checkpoint_and_overlays(trained):
    metrics = json.load(open(os.path.join(trained, "metrics.json")))
    assert set(metrics) == METRIC_KEYS
    assert metrics["n_train"] + 2 == 12 and metrics["n_test"] == 8  # two normal images held out for calibration
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("image_auroc", "pixel_auroc", "pixel_aupro", "image_f1_max"))
    checkpoint = torch.load(os.path.join(trained, "model.pt"), weights_only=True)
    network = MultiAD()
    network.load_state_dict(checkpoint)  # a plain state dict, as in the model zoo
    assert network.is_calibrated and network.input_size.tolist() == [32, 32]
    assert sorted(os.listdir(os.path.join(trained, "overlays"))) == ["00_anomalous.png", "01_normal.png"]
    assert os.listdir(os.path.join(trained, "checkpoints")) == ["checkpoint_epoch=2.pt"]


def test_training_logs_a_real_mlflow_run(trained):
    client = mlflow.MlflowClient(tracking_uri="sqlite:///" + os.path.join(trained, "mlruns.db"))
    experiment = client.get_experiment_by_name("multiad_brain")
    (run_,) = client.search_runs([experiment.experiment_id])
    assert run_.info.status == "FINISHED"
    assert run_.data.params["teacher"] == "efficientnet-lite0" and run_.data.params["epochs"] == "2"
    assert {"distillation_loss", "discriminator_loss", "image_auroc", "pixel_aupro"} <= set(run_.data.metrics)
    assert len(client.get_metric_history(run_.info.run_id, "distillation_loss")) >= 2
    artifacts = {a.path for a in client.list_artifacts(run_.info.run_id)}
    assert {"metrics.json", "train.json"} <= artifacts
    assert len(client.list_artifacts(run_.info.run_id, "overlays")) == 2


def test_evaluate_reproduces_the_training_metrics_and_writes_a_report(trained, mvtec_dir, tmp_path):
    out = str(tmp_path)
    result = run_bundle(
        "evaluating",
        out,
        "--dataset_dir",
        mvtec_dir,
        "--ckpt_path",
        os.path.join(trained, "model.pt"),
        configs=("train.json", "evaluate.json"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.load(open(os.path.join(out, "metrics.json")))
    trained_metrics = json.load(open(os.path.join(trained, "metrics.json")))
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro"):
        assert evaluated[key] == pytest.approx(trained_metrics[key], abs=1e-6)
    assert {"per_image.csv", "roc_curve.png", "pro_curve.png", "worst_cases.png"} <= set(os.listdir(out))
    client = mlflow.MlflowClient(tracking_uri="sqlite:///" + os.path.join(out, "mlruns.db"))
    (run_,) = client.search_runs([client.get_experiment_by_name("multiad_brain").experiment_id])
    assert run_.data.params["mode"] == "evaluation"
    assert len(client.list_artifacts(run_.info.run_id, "evaluation")) == 4


def test_missing_dataset_dir_fails_before_training(tmp_path):
    result = run_bundle("training", str(tmp_path), "--dataset_dir", str(tmp_path / "nope"), "--epochs", "1")
    assert result.returncode != 0
    assert "nope does not exist" in result.stderr
    assert not os.path.exists(os.path.join(tmp_path, "model.pt"))


def test_killed_run_resumes_from_last_epoch(volumes_dir, tmp_path):
    out = str(tmp_path)
    args = ["--dataset_dir", volumes_dir, "--epochs", "12", "--min_foreground", "0.0", "--calibration_fraction", "0.34"]
    command = bundle_command("brain", "training", out, *TINY, *args)
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = os.path.join(out, "checkpoints", "checkpoint_epoch=2.pt")
    deadline = time.time() + 300
    while not os.path.exists(checkpoint) and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert os.path.exists(checkpoint), "training did not reach epoch 2"
    assert not os.path.exists(os.path.join(out, "model.pt"))
    saved = torch.load(last_checkpoint(os.path.join(out, "checkpoints")), weights_only=True)
    done = saved["trainer"]["iteration"] // saved["trainer"]["epoch_length"]  # ignite stores the iteration
    assert 2 <= done < 12

    result = run_bundle("training", out, *args, "--resume", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert f"Restored all variables from {os.path.join(out, 'checkpoints', f'checkpoint_epoch={done}.pt')}" in log
    assert f"Epoch[{done + 1}] Complete" in log and "Epoch[1] Complete" not in log.split("MultiADEvaluator")[0]
    assert last_checkpoint(os.path.join(out, "checkpoints")).endswith("checkpoint_epoch=12.pt")
    assert set(json.load(open(os.path.join(out, "metrics.json")))) == METRIC_KEYS


def test_two_process_ddp_training_on_cpu(mvtec_dir, tmp_path):
    """torchrun, gloo, 2 ranks: both finish, replicas stay identical, rank 0 alone writes outputs."""
    out = str(tmp_path)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533"]
    command = bundle_command(
        "brain",
        "training",
        out,
        "--dataset_dir",
        mvtec_dir,
        "--epochs",
        "2",
        "--image_size",
        "32",
        "--batch_size",
        "2",
        "--num_overlays",
        "2",
        configs=("train.json", "multi_gpu_train.json"),
        launcher=launcher,
    )
    result = run(command)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    checksums = dict(re.findall(r"rank (\d) student checksum (\S+)", log))
    assert set(checksums) == {"0", "1"} and checksums["0"] == checksums["1"]
    assert log.count("metrics written to") == 1
    assert set(json.load(open(os.path.join(out, "metrics.json")))) == METRIC_KEYS
    client = mlflow.MlflowClient(tracking_uri="sqlite:///" + os.path.join(out, "mlruns.db"))
    assert len(client.search_runs([client.get_experiment_by_name("multiad_brain").experiment_id])) == 1
    network = MultiAD()
    network.load_state_dict(torch.load(os.path.join(out, "model.pt"), weights_only=True))  # no "module." prefixes
    assert network.is_calibrated


def test_inference_bundle_on_images_and_volumes(trained, mvtec_dir, volumes_dir, tmp_path):
    out = str(tmp_path / "predictions")
    for source in (os.path.join(mvtec_dir, "test", "scratch"), os.path.join(volumes_dir, "imagesTs")):
        command = bundle_command("brain", "", out, "--input_path", source, configs=("inference.json",))
        command[command.index("--ckpt_path") + 1] = os.path.join(trained, "model.pt")
        result = run(command)
        assert result.returncode == 0, result.stderr[-3000:]
    names = set(os.listdir(out))
    assert {"000_map.npy", "000_overlay.png", "case0_map.nii.gz", "case0_overlay.png", "scores.csv"} <= names
