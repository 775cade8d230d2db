"""Experiment comparison with the real thing: tiny trainings of the mvtec bundle (2 configurations x 2 seeds, one
dataset copy per seed) into one SQLite store, ``compare`` on it, the logged pyfunc model in a fresh process, and a
real ``mlflow server`` over the store answering its REST API."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import requests
from monai.bundle import ConfigWorkflow

from multiad_monai.compare import compare, main
from multiad_monai.handlers.mlflow_tags import RUN_METRICS, git_commit
from tests.bundles.helpers import ROOT, bundle_file
from tests.conftest import write_mvtec

CONFIGS = {"multiad": 0.1, "distill": 0.0}
SEEDS = (0, 1)
EXPERIMENT = "tiny"
REGISTERED = "multiad_tiny"
TINY = {"epochs": 1, "image_size": 64, "batch_size": 4, "num_overlays": 2, "max_iterations": 8}
QUALITY = ("image_auroc", "pixel_auroc", "pixel_aupro", "image_f1_max")


def run_workflow(configs: list[str], run_id: str = "run", **override) -> None:
    """One bundle workflow in this process, as ``python -m monai.bundle run <run_id>`` would run it."""
    bundle_root = os.path.dirname(configs[0])
    workflow = ConfigWorkflow(
        config_file=configs, run_id=run_id, workflow_type=None, bundle_root=bundle_root, **override
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    data = write_mvtec(str(root / "seed0" / "bottle"), seed=5)
    uri = "sqlite:///" + str(root / "mlruns.db")
    for seed in SEEDS:
        # every seed reads its own copy of the data: a different dataset_dir, the same fingerprint
        dataset_dir = str(root / f"seed{seed}" / "bottle")
        if not os.path.isdir(dataset_dir):
            shutil.copytree(data, dataset_dir)
        for config, weight in CONFIGS.items():
            out = str(root / "runs" / f"{config}_{seed}")
            run_workflow(
                [bundle_file("mvtec", "train.json")], dataset_dir=dataset_dir, output_dir=out,
                ckpt_path=os.path.join(out, "model.pt"), seed=seed, adversarial_weight=weight, tracking_uri=uri,
                experiment_name=EXPERIMENT, run_name=f"{config}_{seed}", **TINY,
                run_tags={"config": config},
                register_model=REGISTERED if (config, seed) == ("multiad", 0) else None,
            )  # fmt: skip
    evaluation = str(root / "eval")
    run_workflow(
        [bundle_file("mvtec", "train.json"), bundle_file("mvtec", "evaluate.json")], run_id="evaluating",
        dataset_dir=data, output_dir=evaluation, ckpt_path=str(root / "runs" / "multiad_0" / "model.pt"),
        tracking_uri=uri, experiment_name=EXPERIMENT, **TINY,
    )  # fmt: skip
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    training = {r.info.run_name: r for r in runs if r.data.tags.get("run_type") == "training"}
    (evaluated,) = [r for r in runs if r.data.tags.get("run_type") == "evaluation"]
    return SimpleNamespace(root=root, data=data, uri=uri, client=client, training=training, evaluation=evaluated)


@pytest.fixture(scope="module")
def comparison(store, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("comparison"))
    return compare(store.uri, [EXPERIMENT], filter_string="tags.run_type = 'training'", output_dir=out)


def test_runs_carry_comparable_tags_and_metrics(store):
    assert sorted(store.training) == sorted(f"{c}_{s}" for c in CONFIGS for s in SEEDS)
    fingerprints, commit = set(), git_commit()
    for run in [*store.training.values(), store.evaluation]:
        tags = run.data.tags
        assert run.info.status == "FINISHED"
        assert tags["bundle"] == "mvtec" and tags["domain"] == "industrial" and tags["dataset"] == "bottle"
        assert tags["device"] == "cpu" and tags["torch_version"] and tags["monai_version"]
        assert tags["multiad_monai_version"] and tags["dataset_files"] == "24"
        if commit is None:
            assert "git_commit" not in tags  # not a git checkout: no made-up commit
        else:
            assert tags["git_commit"] == commit[0] and tags["mlflow.source.git.commit"] == commit[0]
        fingerprints.add(tags["dataset_fingerprint"])
    assert len(fingerprints) == 1  # two copies of the data, one fingerprint
    assert len({r.data.params["dataset_dir"] for r in store.training.values()}) == 2
    adversarial = {"adversarial_loss", "discriminator_loss"}  # logged only with adversarial_weight > 0
    names = [set(r.data.metrics) - adversarial for r in store.training.values()]
    assert all(n == names[0] for n in names)  # identical metric names in every run
    assert set(QUALITY) | set(RUN_METRICS) - {"peak_gpu_memory_mb"} <= names[0]
    assert all(r.data.metrics["peak_memory_mb"] > 100 for r in store.training.values())
    assert store.evaluation.data.tags["run_type"] == "evaluation"
    assert {"image_auroc", "eval_images_per_second", "peak_memory_mb"} <= set(store.evaluation.data.metrics)
    assert "train_seconds" not in store.evaluation.data.metrics


def test_compare_groups_seeds_and_shows_only_the_differing_params(store, comparison):
    assert comparison.param_columns == ["adversarial_weight"]  # not seed, output_dir, ckpt_path or dataset_dir
    assert [g.values["config"] for g in comparison.groups] == ["multiad", "distill"]  # in the order they ran
    for group in comparison.groups:
        assert group.seeds == ["0", "1"] and len(group.runs) == 2
        logged = [store.training[f"{group.values['config']}_{s}"].data.metrics for s in SEEDS]
        assert group.values["adversarial_weight"] == str(CONFIGS[group.values["config"]])
        for metric in (*QUALITY, "train_seconds", "peak_memory_mb"):
            values = np.array([m[metric] for m in logged])
            mean, std, n = group.stats(metric)
            assert n == 2 and mean == pytest.approx(values.mean(), abs=1e-12)
            assert std == pytest.approx(values.std(ddof=1), abs=1e-12)
    rows = {r["dataset"]: r for r in comparison.cross_domain}
    assert list(rows) == ["bottle", "Industrial mean"]
    for config in CONFIGS:
        mean, std, n = rows["bottle"]["values"][config]["image_auroc"]
        assert n == 2 and mean == pytest.approx(comparison.groups[list(CONFIGS).index(config)].stats("image_auroc")[0])
        assert rows["Industrial mean"]["values"][config]["image_auroc"][0] == pytest.approx(mean)


def test_compare_writes_csv_html_charts_and_logs_a_comparison_run(store, comparison):
    files = {os.path.basename(p): p for p in comparison.files}
    expected = {"runs.csv", "groups.csv", "cross_domain.csv", "comparison.md", "comparison.html", "training_loss.png"}
    assert expected | {f"chart_{m}.png" for m in ("image_auroc", "pixel_auroc", "pixel_aupro")} <= set(files)
    for name in files:
        if name.endswith(".png"):
            assert open(files[name], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    page = open(files["comparison.html"], encoding="utf-8").read()
    assert page.count("data:image/png;base64,") == 4 and "src='chart" not in page  # self-contained
    assert "adversarial_weight" in page and "Industrial mean" in page
    with open(files["groups.csv"], encoding="utf-8") as f:
        groups = list(csv.DictReader(f))
    for row, group in zip(groups, comparison.groups):
        assert float(row["image_auroc_mean"]) == pytest.approx(group.stats("image_auroc")[0])
        assert float(row["image_auroc_std"]) == pytest.approx(group.stats("image_auroc")[1])
    with open(files["runs.csv"], encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 4
    run = store.client.get_run(comparison.run_id)
    assert run.data.tags["run_type"] == "comparison" and run.data.params["n_runs"] == "4"
    assert set(files) <= {a.path for a in store.client.list_artifacts(comparison.run_id)}
    # a later comparison of everything leaves earlier comparison runs out
    again = compare(store.uri, None, output_dir=str(store.root / "all"), log=False)
    assert len(again.runs) == 5 and "run_type" in again.columns


def test_compare_cli_prints_the_tables_and_names_unknown_experiments(store, tmp_path, capsys):
    main(["--tracking_uri", store.uri, EXPERIMENT, "--group_by", "config", "--output_dir", str(tmp_path), "--no_log"])
    printed = capsys.readouterr().out
    assert "| config | n | seeds |" in printed and "| multiad | 2 | 0,1 |" in printed
    assert "|  | 1 |  |" in printed  # the evaluation run: no config tag, no seed param
    with pytest.raises(SystemExit):
        main(["--tracking_uri", store.uri, "nope", "--output_dir", str(tmp_path)])
    assert "experiments ['nope'] not found" in capsys.readouterr().err


PREDICT = """
import json, sys
import mlflow
tracking_uri, model_uri, registered_name, paths = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
mlflow.set_tracking_uri(tracking_uri)
by_run = mlflow.pyfunc.load_model(model_uri).predict({"image": paths}, params={"return_maps": True})
registered = mlflow.pyfunc.load_model(f"models:/{registered_name}/1").predict({"image": paths})
maps = [[len(m), len(m[0])] for m in by_run["anomaly_map"]]
by_run = by_run.drop(columns="anomaly_map").to_dict("list")
print(json.dumps({"run": by_run, "registered": registered.to_dict("list"), "map_shapes": maps}))
"""


def test_pyfunc_model_in_a_fresh_process_scores_as_the_inference_bundle(store, tmp_path):
    run = store.training["multiad_0"]
    images = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(store.data, "test")) for f in fs)
    run_workflow(
        [bundle_file("mvtec", "inference.json")], input_path=os.path.join(store.data, "test", "scratch"),
        output_dir=str(tmp_path / "bundle"), ckpt_path=str(store.root / "runs" / "multiad_0" / "model.pt"),
    )  # fmt: skip
    with open(tmp_path / "bundle" / "scores.csv", encoding="utf-8") as f:
        bundle = {row["image"]: row for row in csv.DictReader(f)}
    result = subprocess.run(
        [sys.executable, "-c", PREDICT, store.uri, f"runs:/{run.info.run_id}/model", REGISTERED, json.dumps(images)],
        capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    predicted = json.loads(result.stdout.strip().splitlines()[-1])
    assert predicted["run"]["image"] == images and predicted["registered"] == predicted["run"]
    assert predicted["map_shapes"] == [[48, 48]] * len(images)  # maps at the input size
    assert set(predicted["run"]) == {"image", "score", "normalized_score", "is_anomalous", "series_uid"}
    scored = dict(zip(images, zip(*(predicted["run"][k] for k in ("score", "normalized_score", "is_anomalous")))))
    assert len(bundle) == 4
    for path, row in bundle.items():
        score, normalized, anomalous = scored[path]
        assert score == pytest.approx(float(row["score"]), abs=2e-6)
        assert normalized == pytest.approx(float(row["normalized_score"]), abs=1e-4)
        assert anomalous == bool(int(row["is_anomalous"]))
    version = store.client.get_model_version(REGISTERED, "1")
    assert version.run_id == run.info.run_id and version.description.startswith(f"run {run.info.run_id}: image_auroc")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_server_serves_runs_registered_model_and_comparison(store, comparison, tmp_path):
    port = _free_port()
    log = open(tmp_path / "server.log", "w", encoding="utf-8")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store.uri, "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path), start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{base}/health", timeout=2).ok:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not up yet, or slow to answer on a busy machine
                pass
            assert server.poll() is None and time.monotonic() < deadline, open(
                tmp_path / "server.log", encoding="utf-8"
            ).read()[-3000:]
            time.sleep(0.5)
        experiment = requests.get(
            f"{base}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": EXPERIMENT}
        )
        experiment_id = experiment.json()["experiment"]["experiment_id"]
        found = requests.post(
            f"{base}/api/2.0/mlflow/runs/search",
            json={"experiment_ids": [experiment_id], "filter": "tags.run_type = 'training'", "max_results": 100},
            timeout=30,
        ).json()["runs"]
        assert sorted(r["info"]["run_name"] for r in found) == sorted(store.training)
        for run in found:
            metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
            expected = store.training[run["info"]["run_name"]].data.metrics
            assert metrics["image_auroc"] == pytest.approx(expected["image_auroc"])
            assert {"train_seconds", "peak_memory_mb"} <= set(metrics)
        registered = requests.get(
            f"{base}/api/2.0/mlflow/registered-models/get", params={"name": REGISTERED}, timeout=30
        )
        (version,) = registered.json()["registered_model"]["latest_versions"]
        assert version["run_id"] == store.training["multiad_0"].info.run_id
        detail = requests.get(
            f"{base}/api/2.0/mlflow/model-versions/get", params={"name": REGISTERED, "version": version["version"]}
        ).json()["model_version"]
        tags = {t["key"]: t["value"] for t in detail["tags"]}
        assert float(tags["image_auroc"]) == pytest.approx(
            store.training["multiad_0"].data.metrics["image_auroc"], abs=1e-5
        )
        listed = requests.get(f"{base}/api/2.0/mlflow/artifacts/list", params={"run_id": comparison.run_id}, timeout=30)
        assert {"comparison.html", "cross_domain.csv", "training_loss.png"} <= {
            f["path"] for f in listed.json()["files"]
        }
        page = requests.get(
            f"{base}/get-artifact", params={"run_id": comparison.run_id, "path": "comparison.html"}, timeout=30
        )
        assert page.ok and "Industrial mean" in page.text
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers, by the server's PID
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
