from __future__ import annotations

import csv
import os

import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.handlers import MLFlowHandler
from PIL import Image

from multiad_monai.handlers.evaluation_report import EvaluationReport
from multiad_monai.networks import MultiAD
from multiad_monai.recipe import Recipe

N_ITERATIONS, BATCH, SIZE = 3, 4, 16
HOT_NORMAL = "/data/test/good/b1_2.png"  # a normal image scored far above every other image
COLD_ANOMALY = "/data/test/Ungood/b2_1.png"  # an anomalous image scored far below every other image


def make_batches(mask_mode: str = "masks", with_meta: bool = True, with_slices: bool = False) -> list[dict]:
    """3 batches of 4 (normal, anomalous, normal, anomalous) with their synthetic evaluator outputs.

    ``mask_mode``: ``"masks"`` (squares on the anomalous images), ``"empty"`` (all-zero masks) or ``"none"``.
    """
    generator = torch.Generator().manual_seed(0)
    batches = []
    for b in range(N_ITERATIONS):
        labels = torch.tensor([0, 1, 0, 1])
        paths = [f"/data/test/{'Ungood' if label else 'good'}/b{b}_{i}.png" for i, label in enumerate(labels.tolist())]
        scores = torch.rand(BATCH, generator=generator) * 0.4 + 0.5 * labels
        mask = torch.zeros(BATCH, 1, SIZE, SIZE, dtype=torch.bool)
        if mask_mode == "masks":
            mask[labels > 0, :, 4:8, 4:8] = True
        for i, path in enumerate(paths):
            scores[i] = {HOT_NORMAL: 5.0, COLD_ANOMALY: -1.0}.get(path, scores[i])
        meta = {"filename_or_obj": paths} if with_meta else {}
        if with_slices:
            meta["slice_index"] = torch.arange(BATCH) + 10 * b
        batch = {
            "image": MetaTensor(torch.rand(BATCH, 3, SIZE, SIZE, generator=generator), meta=meta),
            "label": labels,
            "anomaly_map": torch.rand(BATCH, 1, SIZE, SIZE, generator=generator) + mask,
            "pred_score": scores,
        }
        if mask_mode != "none":
            batch["mask"] = mask
        batches.append(batch)
    return batches


def evaluator_output(engine: Engine, batch: dict) -> dict:
    """What ``MultiADEvaluator`` puts in ``state.output``: plain tensors, no metadata."""
    output = {k: v for k, v in batch.items() if k != "image"}
    output["image"] = batch["image"].as_tensor()
    return output


def run_report(tmp_path, network: MultiAD, batches: list[dict], **kwargs) -> EvaluationReport:
    engine = Engine(evaluator_output)
    report = EvaluationReport(str(tmp_path), network, **kwargs)
    report.attach(engine)
    engine.run(batches, max_epochs=1)
    return report


def read_rows(tmp_path) -> list[dict]:
    with open(tmp_path / "per_image.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def networks() -> dict[str, MultiAD]:
    calibrated = MultiAD(Recipe.paper(image_size=SIZE))
    calibrated.normalizer.fit_thresholds(torch.rand(4) + 1, torch.rand(4, 1, SIZE, SIZE))
    return {"calibrated": calibrated, "uncalibrated": MultiAD(Recipe.paper(image_size=SIZE))}


@pytest.mark.parametrize("calibration", ["calibrated", "uncalibrated"])
def test_csv_has_one_row_per_sample(tmp_path, networks, calibration):
    network, batches = networks[calibration], make_batches()
    run_report(tmp_path, network, batches)
    rows = read_rows(tmp_path)
    assert list(rows[0]) == ["image", "label", "score", "normalized_score", "is_anomalous"]
    assert [r["image"] for r in rows] == [p for b in batches for p in b["image"].meta["filename_or_obj"]]
    assert [int(r["label"]) for r in rows] == torch.cat([b["label"] for b in batches]).tolist()
    scores = torch.cat([b["pred_score"] for b in batches])
    assert [float(r["score"]) for r in rows] == pytest.approx(scores.tolist())
    if calibration == "calibrated":
        normalized = network.normalize_score(scores)
        assert [float(r["normalized_score"]) for r in rows] == pytest.approx(normalized.tolist())
        assert [int(r["is_anomalous"]) for r in rows] == (normalized > 0.5).int().tolist()
        assert next(r for r in rows if r["image"] == HOT_NORMAL)["is_anomalous"] == "1"
    else:
        assert {r["normalized_score"] for r in rows} == {""} and {r["is_anomalous"] for r in rows} == {""}


@pytest.mark.parametrize(
    "with_meta, with_slices, expected_images, expected_slices",
    [
        (False, False, [str(i) for i in range(N_ITERATIONS * BATCH)], None),
        (True, True, None, [str(10 * b + i) for b in range(N_ITERATIONS) for i in range(BATCH)]),
    ],
)
def test_csv_names_fall_back_to_index_and_keep_slices(
    tmp_path, networks, with_meta, with_slices, expected_images, expected_slices
):
    batches = make_batches(with_meta=with_meta, with_slices=with_slices)
    run_report(tmp_path, networks["uncalibrated"], batches)
    rows = read_rows(tmp_path)
    if expected_images is not None:
        assert [r["image"] for r in rows] == expected_images
    assert ("slice_index" in rows[0]) == (expected_slices is not None)
    if expected_slices is not None:
        assert [r["slice_index"] for r in rows] == expected_slices


@pytest.mark.parametrize(
    "mask_mode, has_pro", [("masks", True), ("empty", False), ("none", False)], ids=["masks", "empty", "none"]
)
def test_figures_are_readable_pngs(tmp_path, networks, mask_mode, has_pro):
    run_report(tmp_path, networks["calibrated"], make_batches(mask_mode))
    expected = {"per_image.csv", "roc_curve.png", "worst_cases.png"} | ({"pro_curve.png"} if has_pro else set())
    assert set(os.listdir(tmp_path)) == expected  # no temporary file left behind
    for name in expected - {"per_image.csv"}:
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and min(image.size) > 50


@pytest.mark.parametrize("num_worst", [1, 4])
def test_worst_cases_are_the_extreme_scores(tmp_path, networks, num_worst):
    batches = make_batches()
    report = run_report(tmp_path, networks["uncalibrated"], batches, num_worst=num_worst)
    scores = torch.cat([b["pred_score"] for b in batches])
    labels = torch.cat([b["label"] for b in batches])
    paths = [p for b in batches for p in b["image"].meta["filename_or_obj"]]
    normal = [i for i in scores.argsort(descending=True).tolist() if labels[i] == 0]
    anomalous = [i for i in scores.argsort().tolist() if labels[i] == 1]
    assert report.worst_false_positives == [paths[i] for i in normal[:num_worst]]
    assert report.worst_false_negatives == [paths[i] for i in anomalous[:num_worst]]
    assert report.worst_false_positives[0] == HOT_NORMAL and report.worst_false_negatives[0] == COLD_ANOMALY


def test_state_is_reset_between_runs(tmp_path, networks):
    engine = Engine(evaluator_output)
    EvaluationReport(str(tmp_path), networks["uncalibrated"]).attach(engine)
    for _ in range(2):
        engine.run(make_batches(), max_epochs=1)
    assert len(read_rows(tmp_path)) == N_ITERATIONS * BATCH


@pytest.mark.parametrize("kwargs", [{"num_worst": -1}, {"fpr_limit": 0.0}, {"fpr_limit": 1.5}])
def test_bad_arguments_fail_early(tmp_path, networks, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        EvaluationReport(str(tmp_path), networks["uncalibrated"], **kwargs)


def test_files_are_logged_to_the_mlflow_run(tmp_path, networks):
    mlflow_handler = MLFlowHandler(tracking_uri=f"sqlite:///{tmp_path}/mlruns.db", experiment_name="t")
    engine = Engine(evaluator_output)
    mlflow_handler.start(engine)
    try:
        report = EvaluationReport(str(tmp_path / "eval"), networks["calibrated"], mlflow_handler=mlflow_handler)
        report.attach(engine)
        engine.run(make_batches(), max_epochs=1)
        run_id = mlflow_handler.cur_run.info.run_id
        logged = {os.path.basename(a.path) for a in mlflow_handler.client.list_artifacts(run_id, "evaluation")}
    finally:
        mlflow_handler.close()
    assert logged == {"per_image.csv", "roc_curve.png", "pro_curve.png", "worst_cases.png"}
