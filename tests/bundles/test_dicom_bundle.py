"""Integration: the brain bundle trains, evaluates and infers on DICOM series (``volumes`` layout, series folders)."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("pydicom")
pytest.importorskip("itk")
pytest.importorskip("highdicom")

from multiad_monai.data.layouts import index_dataset  # noqa: E402
from tests.bundles.helpers import run_in_process  # noqa: E402
from tests.dicom import write_dicom_volumes  # noqa: E402

pytestmark = pytest.mark.slow  # trains and runs the bundle

TINY = {"image_size": 32, "batch_size": 4, "num_overlays": 1, "max_iterations": 8, "epochs": 1}


@pytest.fixture(scope="module")
def dicom_volumes(tmp_path_factory) -> str:
    return write_dicom_volumes(str(tmp_path_factory.mktemp("dicom_volumes") / "brain_dicom"))


def test_volumes_layout_indexes_series_folders_with_nifti_labels(dicom_volumes, tmp_path):
    layout, splits = index_dataset(dicom_volumes)
    assert layout == "volumes"
    assert [os.path.basename(i["image"]) for i in splits["test"]] == ["case0", "case1"]
    assert all(
        i["mask"].endswith(os.path.join("labelsTs", os.path.basename(i["image"]) + ".nii.gz")) for i in splits["test"]
    )
    os.remove(os.path.join(dicom_volumes, "labelsTs", "case1.nii.gz"))
    try:
        with pytest.raises(FileNotFoundError, match=r"imagesTs/case1 has no segmentation .*labelsTs/case1.nii.gz"):
            index_dataset(dicom_volumes)
    finally:
        write_dicom_volumes(dicom_volumes)


def test_train_and_infer_on_dicom_series(dicom_volumes, tmp_path):
    out = str(tmp_path / "run")
    args = {"min_foreground": 0.0, "calibration_fraction": 0.34, "tracking_uri": f"sqlite:///{tmp_path}/mlruns.db"}
    run_in_process("brain", "training", dataset_dir=dicom_volumes, output_dir=out, **TINY, **args)
    metrics = json.load(open(os.path.join(out, "metrics.json"), encoding="utf-8"))
    assert metrics["n_test"] > 0 and 0.0 <= metrics["pixel_auroc"] <= 1.0
    predictions = str(tmp_path / "predictions")
    series = os.path.join(dicom_volumes, "imagesTs", "case0")
    run_in_process("brain", None, ("inference.json",), ckpt_path=os.path.join(out, "model.pt"), input_path=series,
                   output_dir=predictions)  # fmt: skip
    names = set(os.listdir(predictions))
    assert {"1_AX_FLAIR_Ts0_seg.dcm", "1_AX_FLAIR_Ts0_heatmap.dcm", "1_AX_FLAIR_Ts0_map.nii.gz", "scores.csv"} <= names
