"""The app's training tasks over HTTP, on the real MONAI Label server: every parameter checked before a task
starts, a failed task's message in ``GET /train/``, the training processes dying with a server killed by
``kill -9``, and a restarted server marking the run it left interrupted while keeping its folder."""

from __future__ import annotations

import json
import os
import signal
import time

import mlflow
import psutil
import pytest

pytest.importorskip("monailabel", reason="the MONAI Label app needs the extra: pip install -e '.[monailabel]'")

from tests.monailabel.studies import save_volume  # noqa: E402
from tests.monailabel.test_server import copy_app, start_server, stop_server, wait_for  # noqa: E402

pytestmark = pytest.mark.slow  # the real MONAI Label server and its training processes

NORMAL = ["normal0", "normal1", "normal2"]
TINY = {"max_iterations": 8, "image_size": 32, "batch_size": 4, "num_overlays": 1}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, checkpoint):
    root = tmp_path_factory.mktemp("monailabel_train")
    app, studies = copy_app(root), str(root / "studies")
    for name in NORMAL:
        save_volume(os.path.join(studies, f"{name}.nii.gz"))
    save_volume(os.path.join(studies, "lesion0.nii.gz"), lesion=True)
    return app, studies, checkpoint, str(root / "server.log")


@pytest.fixture(scope="module")
def server(setup):
    server = start_server(*setup, models="brain")
    for name in NORMAL:
        marked = server.put(f"/datastore/image/info?image={name}", data={"info": json.dumps({"normal": True})})
        assert marked.status_code == 200, marked.text
    try:
        yield server
    finally:
        stop_server(server)


BAD_PARAMS = [
    ('{"learning_rate": NaN}', "'learning_rate' must be a finite number, got nan"),
    ('{"learning_rate": Infinity}', "'learning_rate' must be a finite number, got inf"),
    ('{"learning_rate": 1e12}', "'learning_rate' must be in (0, 1], got 1000000000000.0"),
    ('{"learning_rate": 0}', "'learning_rate' must be in (0, 1], got 0"),
    ('{"betas": [0.5, -Infinity]}', "'betas' must be a finite number, got -inf"),
    ('{"calibration_fraction": 1.0}', "'calibration_fraction' must be in (0, 1), got 1.0"),
    ('{"epochs": 0}', "'epochs' must be >= 1, got 0"),
    ('{"epochs": 1.5}', "'epochs' must be a whole number or null (held-out rule), got 1.5"),
    ('{"seed": -1}', "'seed' must be in [0, 4294967295], got -1"),
]


@pytest.mark.parametrize("path", ["/train/brain", "/train/"])  # /train/ takes {"<model>": {...}} for every model
@pytest.mark.parametrize("body, message", BAD_PARAMS)
def test_bad_train_params_answer_json_400_and_start_no_task(server, path, body, message):
    body = body if path == "/train/brain" else '{"brain": ' + body + "}"
    response = server.post(path, data=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]
    status = server.get("/train/")  # no task was started, and the status still answers JSON
    assert status.status_code == 404 and status.json()["detail"] == "No Train Tasks Found"


EMPTY_SPLITS = [  # three normal studies of 12 slices each; what the training bundle would stop on
    ({"calibration_fraction": 0.9}, "has 3 normal training volumes; at least 4 are needed"),
    ({"slice_range": [50, 60]}, "no normal train samples left in the datastore (3 studies marked normal)"),
]


@pytest.mark.parametrize("path", ["/train/brain", "/train/"])
@pytest.mark.parametrize("params, message", EMPTY_SPLITS)
def test_a_split_the_bundle_would_find_empty_answers_json_400_before_a_task_starts(server, path, params, message):
    body = params if path == "/train/brain" else {"brain": params}
    response = server.post(path, json=body)
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]
    status = server.get("/train/")
    assert status.status_code == 404 and status.json()["detail"] == "No Train Tasks Found"
    runs_dir = os.path.join(server.app, "model", "brain")
    assert not os.path.isdir(runs_dir) or not [n for n in os.listdir(runs_dir) if os.path.isdir(f"{runs_dir}/{n}")]


def test_a_task_failing_in_the_training_process_reports_its_message_in_get_train(server):
    response = server.post("/train/brain", json={**TINY, "epochs": 1, "teacher": "no-such-teacher"})
    assert response.status_code == 200, response.text
    task = wait_for(server, "train", timeout=300)
    assert task["status"] == "ERROR"
    assert "the brain training bundle failed (exit code 1)" in task["details"][-1], task["details"]
    assert "no-such-teacher" in task["details"][-1], task["details"]
    runs_dir = os.path.join(server.app, "model", "brain")
    assert [n for n in os.listdir(runs_dir) if os.path.isdir(os.path.join(runs_dir, n))] == []  # nothing half-made


def _processes(server) -> dict[str, psutil.Process]:
    """The server's task subprocess and the bundle training process it started."""
    found = {}
    for child in psutil.Process(server.process.pid).children(recursive=True):
        command = " ".join(child.cmdline())
        if "monailabel.interfaces.utils.app" in command and "train" in command:
            found["task"] = child
        elif "monai.bundle" in command:
            found["bundle"] = child
    return found


def _dead(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_kill_9_of_the_server_during_train_ends_the_training_and_a_restart_marks_it_interrupted(setup, server):
    base = server.get("/info/").json()["models"]["brain"]["checkpoint"]
    runs_dir = os.path.join(server.app, "model", "brain")
    response = server.post("/train/brain", json={**TINY, "epochs": 500})
    assert response.status_code == 200, response.text
    deadline = time.time() + 300
    while not ({"task", "bundle"} <= set(found := _processes(server)) and _has_checkpoint(runs_dir)):
        assert time.time() < deadline, server.log_tail()
        time.sleep(0.5)
    (run,) = [n for n in os.listdir(runs_dir) if os.path.isdir(os.path.join(runs_dir, n))]

    os.kill(server.process.pid, signal.SIGKILL)  # the server alone, as a crash or the OOM killer would
    server.process.wait()
    deadline = time.time() + 60
    while not all(_dead(p) for p in found.values()):
        assert time.time() < deadline, f"still running after the server died: {found}"
        time.sleep(0.5)

    restarted = start_server(*setup, models="brain")
    try:
        stats = restarted.get("/info/").json()["train_stats"]["brain"]
        assert stats["interrupted"] == [run] and not stats["retrained"]
        assert os.path.isdir(os.path.join(runs_dir, run, "checkpoints"))  # the folder is kept as it was
        record = json.load(open(os.path.join(runs_dir, run, "interrupted.json"), encoding="utf-8"))
        assert record["status"] == "INTERRUPTED"
        assert restarted.get("/info/").json()["models"]["brain"]["checkpoint"] == base  # still the base model
        task = restarted.get("/train/")  # MONAI Label's tasks died with the server: the run is reported from disk
        assert task.status_code == 200, task.text
        task = task.json()
        assert (task["id"], task["model"], task["status"]) == (run, "brain", "INTERRUPTED")
        assert task["run_dir"] == os.path.join(runs_dir, run) and "server stopped or killed" in task["details"][-1]
        assert [t["id"] for t in restarted.get("/train/?all=true").json()] == [run]
        client = mlflow.MlflowClient(tracking_uri="sqlite:///" + os.path.join(runs_dir, "mlruns.db"))
        (mlflow_run,) = client.search_runs([client.get_experiment_by_name("multiad_brain").experiment_id])
        assert mlflow_run.info.run_name == f"brain-{run}" and mlflow_run.info.status == "KILLED"

        # a training of the model held by another process (a second server on the same app): refused, not doubled
        from multiad_monai.monailabel.runs import TrainingLock

        lock = TrainingLock(runs_dir, "brain").acquire("held by the test")
        try:
            busy = restarted.post("/train/brain", json={**TINY, "epochs": 1})
            assert busy.status_code == 409 and "already being trained" in busy.json()["detail"], busy.text
            assert [n for n in os.listdir(runs_dir) if os.path.isdir(os.path.join(runs_dir, n))] == [run]
        finally:
            lock.release()
    finally:
        stop_server(restarted)


def _has_checkpoint(runs_dir: str) -> bool:
    if not os.path.isdir(runs_dir):
        return False
    return any(
        os.listdir(os.path.join(runs_dir, n, "checkpoints"))
        for n in os.listdir(runs_dir)
        if os.path.isdir(os.path.join(runs_dir, n, "checkpoints"))
    )
