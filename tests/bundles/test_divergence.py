"""No diverged model leaves training: real training processes whose weights overflow stop with a message naming
the epoch and the learning rate, keep the last good checkpoint and an earlier finished model, and fail their
MLflow run."""

from __future__ import annotations

import os

import mlflow
import pytest

from tests.bundles.faults import DIVERGE
from tests.bundles.helpers import ROOT, bundle_command, run

pytestmark = pytest.mark.slow  # real training processes

ARGS = ["--image_size", "32", "--batch_size", "4", "--num_overlays", "1", "--max_iterations", "8"]
PROBE = os.path.join(ROOT, "tests", "bundles", "fault_probe.json")


def _train(out: str, dataset_dir: str, *extra: str, configs=("train.json",)):
    return run(bundle_command("brain", "training", out, *ARGS, "--dataset_dir", dataset_dir, *extra, configs=configs))


def _statuses(out: str) -> list[str]:
    client = mlflow.MlflowClient(tracking_uri="sqlite:///" + os.path.join(out, "mlruns.db"))
    experiment = client.get_experiment_by_name("multiad_brain")
    return sorted(r.info.status for r in client.search_runs([experiment.experiment_id])) if experiment else []


def test_too_high_learning_rate_stops_in_the_first_epoch_and_saves_nothing(mvtec_dir, tmp_path):
    out = str(tmp_path)
    result = _train(out, mvtec_dir, "--epochs", "2", "--learning_rate", "1e12")
    last = result.stderr.strip().splitlines()[-3]
    assert result.returncode == 1, result.stderr[-3000:]
    assert "training diverged in epoch 1" in last and "learning_rate 1e+12" in last, last
    assert not {"model.pt", "metrics.json"} & set(os.listdir(out))
    assert not os.path.isdir(os.path.join(out, "checkpoints")) or not os.listdir(os.path.join(out, "checkpoints"))
    assert _statuses(out) == ["FAILED"]


def test_divergence_in_epoch_2_keeps_epoch_1_and_the_earlier_model(mvtec_dir, tmp_path):
    out = str(tmp_path)
    assert _train(out, mvtec_dir, "--epochs", "1").returncode == 0
    before = {name: open(os.path.join(out, name), "rb").read() for name in ("model.pt", "metrics.json")}

    result = _train(
        out, mvtec_dir, "--epochs", "3", "--overwrite", "True", "--fault", DIVERGE, configs=("train.json", PROBE)
    )
    last = result.stderr.strip().splitlines()[-3]
    assert result.returncode == 1, result.stderr[-3000:]
    assert "training diverged in epoch 2" in last and "running_var" in last and "checkpoint_epoch=1.pt" in last, last
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["checkpoint_epoch=1.pt"]
    assert {name: open(os.path.join(out, name), "rb").read() for name in before} == before  # byte for byte
    assert _statuses(out) == ["FAILED", "FINISHED"]
