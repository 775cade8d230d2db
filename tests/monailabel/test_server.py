"""The MONAI Label app over HTTP: the real server (``python -m monailabel.main start_server``) on 127.0.0.1.

One server for the module, over a temporary studies folder of NIfTI / NRRD volumes and a PNG, serving a brain
model trained for one epoch on tiny seeded volumes. The tests run in order: requests that change nothing,
bad requests, triage (which marks studies reviewed), then retraining on the studies marked normal.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass

import mlflow
import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("monailabel", reason="the MONAI Label app needs the extra: pip install -e '.[monailabel]'")

import requests  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from PIL import Image  # noqa: E402
from requests_toolbelt.multipart.decoder import MultipartDecoder  # noqa: E402

from tests.bundles.helpers import ROOT  # noqa: E402
from tests.monailabel.studies import LESION, TILTED_AFFINE, save_volume, volume, write_png  # noqa: E402
from tests.pacs import free_port  # noqa: E402

pytestmark = pytest.mark.slow  # the real MONAI Label server

NORMAL = ["normal0", "normal1", "normal2"]
LESIONS = ["lesion0", "tilted", "scan"]  # scan is an NRRD volume
BROKEN = ["fourd", "corrupt"]


def write_studies(folder: str) -> None:
    for name in NORMAL:
        save_volume(os.path.join(folder, f"{name}.nii.gz"))
    save_volume(os.path.join(folder, "lesion0.nii.gz"), lesion=True)
    save_volume(os.path.join(folder, "tilted.nii.gz"), lesion=True, affine=TILTED_AFFINE)
    scan = sitk.GetImageFromArray(volume("scan", lesion=True).transpose(2, 1, 0))  # SimpleITK indexes (z, y, x)
    scan.SetSpacing((1.5, 1.5, 3.0))
    scan.SetOrigin((10.0, -20.0, 5.0))
    sitk.WriteImage(scan, os.path.join(folder, "scan.nrrd"))
    write_png(os.path.join(folder, "photo.png"))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 2), np.float32), np.eye(4)), os.path.join(folder, "fourd.nii.gz"))
    with open(os.path.join(folder, "corrupt.nii.gz"), "wb") as f:
        f.write(b"not a NIfTI file" * 8)


@dataclass
class Server:
    url: str
    app: str
    studies: str
    process: subprocess.Popen
    log: str

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.url + path, timeout=300, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=60, **kwargs)

    def put(self, path: str, **kwargs) -> requests.Response:
        return requests.put(self.url + path, timeout=60, **kwargs)

    def log_tail(self) -> str:
        with open(self.log, encoding="utf-8") as f:
            return f.read()[-4000:]


def start_server(
    app: str, studies: str, checkpoint: str, log: str, models: str = "brain,mvtec", env: dict | None = None
) -> Server:
    """``python -m monailabel.main start_server`` in its own session, answering ``GET /info/``; ``env`` adds
    environment variables (MONAI Label settings)."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p),
        # the tests call /scoring themselves (by default it also runs at start-up, after /train and /activelearning)
        "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
        **(env or {}),
    }
    command = [
        sys.executable, "-m", "monailabel.main", "start_server", "--app", app, "--studies", studies,
        "--conf", "models", models, "--conf", "brain_ckpt_path", checkpoint,
        "--conf", "mvtec_ckpt_path", checkpoint, "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with open(log, "a", encoding="utf-8") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", app, studies, process, log)
    deadline = time.time() + 180
    while True:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{server.log_tail()}")
        try:
            if server.get("/info/").status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        if time.time() > deadline:
            stop_server(server)
            pytest.fail(f"the server did not answer within 180 s:\n{server.log_tail()}")
        time.sleep(1)


def stop_server(server: Server) -> None:
    """SIGTERM to the server's process group (its task subprocesses too), SIGKILL if it lingers."""
    try:
        os.killpg(server.process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()


def copy_app(root) -> str:
    app = str(root / "app")
    shutil.copytree(os.path.join(ROOT, "apps", "multiad"), app, ignore=shutil.ignore_patterns("model", "logs", "lib"))
    return app


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint):
    root = tmp_path_factory.mktemp("monailabel_server")
    app, studies = copy_app(root), str(root / "studies")
    write_studies(studies)
    server = start_server(app, studies, checkpoint, str(root / "server.log"))
    try:
        yield server
    finally:
        stop_server(server)


def parts(response: requests.Response, tmp_path) -> tuple[dict, str]:
    """``output=all`` answers: the JSON and the result file, saved under its own name."""
    assert response.status_code == 200, response.text[:2000]
    result, path = None, None
    for part in MultipartDecoder(response.content, response.headers["content-type"]).parts:
        disposition = part.headers[b"Content-Disposition"].decode()
        if 'name="params"' in disposition:
            result = json.loads(part.content)
        else:
            path = str(tmp_path / disposition.split('filename="')[1].rstrip('"'))
            with open(path, "wb") as f:
                f.write(part.content)
    return result, path


def wait_for(server: Server, kind: str, timeout: float = 300) -> dict:
    """Poll ``GET /train/`` or ``/scoring/`` until the latest task ends."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        task = server.get(f"/{kind}/").json()
        if task.get("status") in ("DONE", "ERROR", "STOPPED"):
            return task
        time.sleep(2)
    pytest.fail(f"{kind} did not end within {timeout} s:\n{server.log_tail()}")


def stored(server: Server) -> dict[str, dict]:
    """Image info of every study, as the server holds it."""
    objects = server.get("/datastore/?output=all").json()["objects"]
    return {image_id: obj["image"]["info"] for image_id, obj in objects.items()}


def test_info_lists_models_trainers_triage_and_binds_to_localhost(server, checkpoint):
    info = server.get("/info/").json()
    assert sorted(info["models"]) == ["brain", "mvtec"]
    model = info["models"]["brain"]
    assert model["type"] == "segmentation" and model["labels"] == {"anomaly": 1}
    assert model["checkpoint"]["path"] == checkpoint and len(model["checkpoint"]["sha256"]) == 16
    assert sorted(info["trainers"]) == ["brain", "mvtec"] and info["trainers"]["brain"]["config"]["epochs"] is None
    assert "most_anomalous" in info["strategies"] and "anomaly_score" in info["scoring"]
    assert info["datastore"]["total"] == 9
    with open(server.log, encoding="utf-8") as f:
        assert f"Uvicorn running on {server.url}" in f.read()  # bound to the loopback address only


@pytest.mark.parametrize("image_id", ["lesion0", "tilted"])  # RAS, and oblique stored left-posterior-inferior
def test_label_has_the_input_geometry(server, tmp_path, image_id):
    result, path = parts(server.post(f"/infer/brain?image={image_id}&output=all"), tmp_path)
    source, label = nib.load(os.path.join(server.studies, f"{image_id}.nii.gz")), nib.load(path)
    assert path.endswith(".nii.gz") and label.shape == source.shape == (24, 24, 12)
    assert np.array_equal(label.affine, source.affine) and label.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(label.dataobj))) <= {0, 1}
    assert result["dimension"] == 3 and len(result["slice_scores"]) == 12 and len(result["top_slices"]) == 3
    assert result["score"] == pytest.approx(max(result["slice_scores"]), abs=1e-5)
    assert result["is_anomalous"] == (result["normalized_score"] > 0.5)
    top = result["top_slices"][0]
    assert top["voxel_axis"] == 2 and top["voxel_index"] in (4, 5, 6)  # the lesion's slices, in file order
    assert result["checkpoint"]["sha256"] == server.get("/info/").json()["models"]["brain"]["checkpoint"]["sha256"]


def test_nrrd_volume_and_nrrd_result_keep_the_geometry(server, tmp_path):
    response = server.post("/infer/brain?image=scan&output=image", data={"params": '{"result_extension": ".nrrd"}'})
    assert response.status_code == 200, response.text
    path = str(tmp_path / "scan_label.nrrd")
    with open(path, "wb") as f:
        f.write(response.content)
    source, label = sitk.ReadImage(os.path.join(server.studies, "scan.nrrd")), sitk.ReadImage(path)
    assert label.GetSize() == source.GetSize()
    for get in ("GetSpacing", "GetOrigin", "GetDirection"):
        assert np.allclose(getattr(label, get)(), getattr(source, get)(), atol=1e-5), get


def test_heatmap_scores_the_lesion_above_normal_tissue(server, tmp_path):
    response = server.post("/infer/brain?image=lesion0&output=all", data={"params": '{"result": "heatmap"}'})
    result, path = parts(response, tmp_path)
    heatmap = nib.load(path)
    assert heatmap.get_data_dtype() == np.float32 and result["result"] == "heatmap"
    values = np.asarray(heatmap.dataobj)
    inside = np.zeros(values.shape, dtype=bool)
    inside[LESION] = True
    assert 0.0 <= values.min() and values.max() <= 1.0
    assert values[inside].mean() > 1.5 * values[~inside].mean()


@pytest.mark.parametrize("result, suffix, mode", [("label", ".png", "L"), ("heatmap", ".tif", "F")])
def test_2d_image(server, tmp_path, result, suffix, mode):
    response = server.post("/infer/brain?image=photo&output=all", data={"params": json.dumps({"result": result})})
    answer, path = parts(response, tmp_path)
    image = Image.open(path)
    assert path.endswith(suffix) and image.mode == mode and image.size == (48, 40)
    assert answer["dimension"] == 2 and answer["shape"] == [40, 48]


def test_upload_then_infer(server, tmp_path):
    source = save_volume(str(tmp_path / "uploaded.nii.gz"), lesion=True)
    with open(source, "rb") as f:  # an upload without a datastore id
        answer = server.post("/infer/mvtec?output=json", files={"file": ("uploaded.nii.gz", f)})
    assert answer.status_code == 200 and answer.json()["model"] == "mvtec" and answer.json()["shape"] == [24, 24, 12]
    with open(source, "rb") as f:  # into the datastore, then by id
        added = server.put("/datastore/image?image=uploaded", files={"file": ("uploaded.nii.gz", f)})
    assert added.status_code == 200 and added.json() == {"image": "uploaded"}
    assert server.post("/infer/brain?image=uploaded&output=json").json()["dimension"] == 3


def huge_header() -> bytes:
    """A NIfTI file of 64 voxels whose header declares 30000^3 (a damaged header, 100 TB to allocate)."""
    image = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    data = bytearray(image.header.binaryblock + b"\0" * 4 + np.zeros(64, np.float32).tobytes())
    struct.pack_into("<8h", data, 40, 3, 30000, 30000, 30000, 1, 1, 1, 1)  # dim[0..7]
    return bytes(data)


BAD_REQUESTS = [
    ("/infer/nope?image=lesion0", {}, 404, "unknown model 'nope'; available: ['brain', 'mvtec']"),
    ("/infer/brain?image=nope", {}, 404, "image 'nope' is not in the datastore"),
    ("/infer/brain", {}, 400, "give an image id"),
    ("/infer/brain?image=fourd", {}, 422, "expected a 3D volume"),
    ("/infer/brain?image=corrupt", {}, 422, "cannot load corrupt.nii.gz"),
    ("/infer/brain", {"files": {"file": ("upload.nii.gz", b"garbage")}}, 422, "cannot load upload.nii.gz: "),
    ("/infer/brain", {"files": {"file": ("notes.txt", b"hello")}}, 422, "unsupported file type 'notes.txt'"),
    (
        "/infer/brain",
        {"files": {"file": ("huge.nii", huge_header())}},
        422,
        "cannot load huge.nii: its header declares more data than fits in memory",
    ),
    ("/infer/brain?image=lesion0", {"data": {"params": '{"result": "map"}'}}, 400, "params.result must be one of"),
    ("/infer/brain?image=lesion0", {"data": {"params": '{"threshold": 2}'}}, 400, "params.threshold must be"),
    ("/infer/brain?image=lesion0", {"data": {"params": "{bad"}}, 400, "params is not valid JSON"),
    ("/infer/brain?image=lesion0&output=pdf", {}, 422, "output"),
    ("/train/nope", {"json": {}}, 404, "unknown model 'nope'"),
    ("/train/brain", {"json": {"epochz": 1}}, 400, "unknown train parameter 'epochz'"),
    ("/train/brain", {"json": {"epochs": "many"}}, 400, "'epochs' must be a whole number or null"),
    ("/train/brain", {"json": {"epochs": 1}}, 409, "at least 3 studies marked normal, found 0"),
    ("/scoring/nope", {}, 404, "unknown scoring method 'nope'"),
    ("/activelearning/nope", {}, 404, "unknown strategy 'nope'"),
    ("/activelearning/most_anomalous", {"json": {"model": "nope"}}, 404, "unknown model 'nope'"),
]


@pytest.mark.parametrize("path, kwargs, status, message", BAD_REQUESTS)
def test_bad_request_answers_4xx_with_a_message(server, path, kwargs, status, message):
    response = server.post(path, **kwargs)
    assert response.status_code == status, response.text
    assert message in json.dumps(response.json()["detail"]) and "Traceback" not in response.text
    assert server.get("/info/").status_code == 200  # still answering
    assert server.process.poll() is None


def test_scoring_stores_scores_and_most_anomalous_hands_out_the_highest_first(server, tmp_path):
    task = server.post("/scoring/anomaly_score").json()
    assert task["status"] in ("SUBMITTED", "RUNNING")
    assert wait_for(server, "scoring")["status"] == "DONE"
    deadline = time.time() + 30  # the server reloads the datastore file the scoring subprocess wrote
    while not all("multiad" in info for info in stored(server).values()) and time.time() < deadline:
        time.sleep(1)
    infos = stored(server)
    scores = {i: info["multiad"]["brain"] for i, info in infos.items()}
    assert all("error" in scores[i] for i in BROKEN) and "3D volume" in scores["fourd"]["error"]
    assert set(infos["lesion0"]["multiad"]) == {"brain", "mvtec"}
    assert min(scores[i]["score"] for i in LESIONS) > max(scores[i]["score"] for i in NORMAL)

    # the same checkpoint again: every study is skipped
    again = server.post("/scoring/anomaly_score?run_sync=true").json()
    assert again["brain"]["scored"] == 0 and again["brain"]["skipped"] == len(infos)

    # normal2 is reviewed by an empty label, like a segmentation submitted empty from the viewer
    empty = str(tmp_path / "normal2.nii.gz")
    affine = nib.load(os.path.join(server.studies, "normal2.nii.gz")).affine
    nib.save(nib.Nifti1Image(np.zeros((24, 24, 12), np.uint8), affine), empty)
    with open(empty, "rb") as f:
        saved = server.put("/datastore/label?image=normal2&tag=final", files={"label": ("normal2.nii.gz", f)})
    assert saved.status_code == 200, saved.text

    handed = []
    while True:
        study = server.post("/activelearning/most_anomalous", json={}).json()
        if not study:
            break
        candidates = {i: s for i, s in scores.items() if i not in handed and i != "normal2"}
        best = max((s.get("normalized_score", -1), s.get("score", -1)) for s in candidates.values())
        chosen = scores[study["id"]]
        assert (chosen.get("normalized_score", -1), chosen.get("score", -1)) == best, (study["id"], candidates)
        handed.append(study["id"])
        verdict = {"normal": study["id"] in NORMAL}  # reviewed: normal, or not normal without a label
        marked = server.put(f"/datastore/image/info?image={study['id']}", data={"info": json.dumps(verdict)})
        assert marked.status_code == 200, marked.text
        assert len(handed) <= len(scores)
    assert sorted(handed) == sorted(set(scores) - {"normal2"})
    assert set(handed[-2:]) == set(BROKEN)  # not scored: last


def test_train_on_the_normal_studies_serves_the_new_checkpoint(server, checkpoint):
    before = server.get("/info/").json()["models"]["brain"]["checkpoint"]
    task = server.post(
        "/train/brain", json={"epochs": 1, "max_iterations": 8, "image_size": 32, "batch_size": 4, "num_overlays": 1}
    )
    assert task.status_code == 200 and task.json()["status"] in ("SUBMITTED", "RUNNING"), task.text
    done = wait_for(server, "train", timeout=420)
    assert done["status"] == "DONE", "\n".join(done.get("details", []))

    info = server.get("/info/").json()
    after = info["models"]["brain"]["checkpoint"]
    run = info["train_stats"]["brain"]
    assert after["sha256"] != before["sha256"] and after["path"] == run["ckpt_path"]
    assert run["retrained"] and run["studies"]["normal"] == NORMAL and run["params"]["image_size"] == 32
    run_dir = os.path.join(server.app, "model", "brain", run["run"])
    assert {"run.json", "model.pt", "metrics.json", "args.json", "dataset"} <= set(os.listdir(run_dir))
    assert info["models"]["mvtec"]["checkpoint"]["path"] == checkpoint  # only the model asked for changes

    client = mlflow.MlflowClient(tracking_uri="sqlite:///" + os.path.join(server.app, "model", "brain", "mlruns.db"))
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("multiad_brain").experiment_id])
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.info.run_name == f"brain-{run['run']}"

    answer = server.post("/infer/brain?image=lesion0&output=json").json()
    assert answer["checkpoint"]["sha256"] == after["sha256"]
    rescored = server.post("/scoring/anomaly_score?run_sync=true").json()
    assert rescored["brain"]["skipped"] == 0 and rescored["brain"]["checkpoint"] == after["sha256"]
    assert rescored["mvtec"]["scored"] == 0  # its checkpoint did not change
