"""Nothing lost: real training processes killed (SIGKILL) at five points resume to the result of an uninterrupted
run, reruns never destroy earlier results, and every training run is one MLflow run, also when two share a store."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import mlflow
import pytest
import torch

from multiad_monai.handlers import create_tracking_store, last_checkpoint
from tests.bundles.faults import POINTS
from tests.bundles.helpers import ROOT, bundle_command, run, run_in_process

pytestmark = pytest.mark.slow  # real training processes, killed and resumed

ARGS = ["--epochs", "3", "--image_size", "32", "--batch_size", "4", "--num_overlays", "1", "--max_iterations", "8"]
PROBE = os.path.join(ROOT, "tests", "bundles", "fault_probe.json")
METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro", "image_f1_max")


def _runs(out: str) -> list:
    client = mlflow.MlflowClient(tracking_uri="sqlite:///" + os.path.join(out, "mlruns.db"))
    return client.search_runs([client.get_experiment_by_name("multiad_brain").experiment_id])


def _train(out: str, dataset_dir: str, *extra: str, configs=("train.json",)) -> subprocess.CompletedProcess:
    return run(bundle_command("brain", "training", out, *ARGS, "--dataset_dir", dataset_dir, *extra, configs=configs))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mvtec_dir) -> dict:
    """An uninterrupted run with the same seed."""
    out = str(tmp_path_factory.mktemp("reference"))
    run_in_process(
        "brain",
        "training",
        dataset_dir=mvtec_dir,
        output_dir=out,
        epochs=3,
        image_size=32,
        batch_size=4,
        max_iterations=8,
    )
    return json.load(open(os.path.join(out, "metrics.json"), encoding="utf-8"))


@pytest.mark.parametrize("point", POINTS)
def test_killed_run_resumes_to_the_uninterrupted_result(point, reference, mvtec_dir, tmp_path):
    out = str(tmp_path)
    killed = _train(out, mvtec_dir, "--fault", point, configs=("train.json", PROBE))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not os.path.exists(os.path.join(out, "metrics.json"))
    if point == "mid_epoch":  # the same command again does not start over silently
        refused = _train(out, mvtec_dir)
        assert refused.returncode != 0 and "--resume true to continue it" in refused.stderr.splitlines()[-3]

    last = last_checkpoint(os.path.join(out, "checkpoints"))
    trainer = torch.load(last, weights_only=True)["trainer"]
    done = trainer["iteration"] // trainer["epoch_length"]  # epochs done, 1 or 3 (ignite stores the iteration)
    resumed = _train(out, mvtec_dir, "--resume", "true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    training_log = log.split("MultiADEvaluator")[0]
    assert f"Restored all variables from {last}" in log  # it continues, it does not start over
    assert f"Epoch[{done}] Complete" not in training_log and (done == 3 or f"Epoch[{done + 1}] Complete" in log)
    metrics = json.load(open(os.path.join(out, "metrics.json"), encoding="utf-8"))
    for key in METRICS:
        assert metrics[key] == pytest.approx(reference[key], abs=1e-6), key
    assert metrics["train_seconds"] > 0
    (run_,) = _runs(out)  # the resumed run continued the killed run's MLflow run
    assert run_.info.status == "FINISHED"
    folders = (out, os.path.join(out, "checkpoints"))
    assert not [n for d in folders for n in os.listdir(d) if n.startswith(("tmp", "."))]  # no half-written file


def test_finished_run_is_never_overwritten_by_accident(mvtec_dir, tmp_path):
    out = str(tmp_path)
    assert _train(out, mvtec_dir, "--epochs", "1").returncode == 0
    before = {name: open(os.path.join(out, name), "rb").read() for name in ("model.pt", "metrics.json")}
    result = _train(out, mvtec_dir, "--epochs", "1", "--learning_rate", "0.01")
    last_lines = result.stderr.strip().splitlines()[-3:]
    assert result.returncode != 0 and "already holds a finished training run" in "\n".join(last_lines)
    assert {name: open(os.path.join(out, name), "rb").read() for name in before} == before  # byte for byte

    # --resume does not train a finished run again, with or without other hyper-parameters
    for extra in ((), ("--learning_rate", "0.5")):
        resumed = _train(out, mvtec_dir, "--epochs", "1", "--resume", "True", *extra)
        last = resumed.stderr.strip().splitlines()[-3]
        assert resumed.returncode == 1 and "holds a finished training run" in last and "--overwrite True" in last, last
        assert "Epoch[" not in resumed.stdout + resumed.stderr
        assert {name: open(os.path.join(out, name), "rb").read() for name in before} == before
    assert [r.info.status for r in _runs(out)] == ["FINISHED"]

    assert _train(out, mvtec_dir, "--epochs", "1", "--learning_rate", "0.01", "--overwrite", "true").returncode == 0
    runs = _runs(out)
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"] and len({r.info.run_name for r in runs}) == 2


def test_resume_with_other_hyper_parameters_is_refused_before_any_work(mvtec_dir, tmp_path):
    out = str(tmp_path)
    killed = _train(out, mvtec_dir, "--fault", "mid_epoch", configs=("train.json", PROBE))
    assert killed.returncode == -signal.SIGKILL
    folder = os.path.join(out, "checkpoints")
    before = {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)}

    refused = _train(out, mvtec_dir, "--resume", "True", "--learning_rate", "0.5", "--epochs", "4")
    last = refused.stderr.strip().splitlines()[-3]
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert "learning_rate: stored 0.001, given 0.5" in last and "epochs: stored 3, given 4" in last, last
    assert "--overwrite True" in last and "--output_dir" in last, last
    assert "Restored all variables" not in refused.stdout + refused.stderr  # nothing was loaded or trained
    assert {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)} == before
    assert [r.info.status for r in _runs(out)] == ["RUNNING"]  # the killed run, still resumable

    resumed = _train(out, mvtec_dir, "--resume", "True")  # nothing was lost: the same run continues
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r.info.status for r in _runs(out)] == ["FINISHED"]


def test_killed_run_replaced_with_other_settings_is_marked_killed(mvtec_dir, tmp_path):
    out = str(tmp_path)
    killed = _train(out, mvtec_dir, "--fault", "mid_epoch", configs=("train.json", PROBE))
    assert killed.returncode == -signal.SIGKILL
    replaced = _train(out, mvtec_dir, "--overwrite", "true", "--learning_rate", "0.003")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    statuses = {r.data.params["learning_rate"]: r.info.status for r in _runs(out)}
    assert statuses == {"0.001": "KILLED", "0.003": "FINISHED"}
    # the killed run's epoch-1 checkpoint is gone; the new run keeps its last two
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt"]


@pytest.mark.parametrize("store_exists", [False, True])
def test_two_concurrent_runs_into_one_store_are_two_finished_runs(mvtec_dir, tmp_path, store_exists):
    store = "sqlite:///" + str(tmp_path / "shared" / "mlruns.db")
    if store_exists:
        create_tracking_store(store)
    commands = [
        bundle_command("brain", "training", str(tmp_path / name), *ARGS, "--dataset_dir", mvtec_dir, "--epochs", "1")
        + ["--tracking_uri", store]
        for name in ("a", "b")
    ]
    processes = [
        subprocess.Popen(
            c, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace"
        )
        for c in commands
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    client = mlflow.MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("multiad_brain").experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
