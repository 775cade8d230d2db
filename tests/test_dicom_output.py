"""DICOM in, DICOM out through the inferer: the scores of a NIfTI copy, a SEG and a parametric map that pass the
validator and read back as the NIfTI label, one result per series of a study, and the pyfunc model's rows."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

pytest.importorskip("pydicom")
pytest.importorskip("itk")
hd = pytest.importorskip("highdicom")

import pydicom  # noqa: E402
from monai.transforms import LoadImage  # noqa: E402

from multiad_monai.checkpoint import checkpoint_sha256  # noqa: E402
from multiad_monai.inference import AnomalyInferer, list_inputs  # noqa: E402
from multiad_monai.mlflow_model import MultiADPyfunc  # noqa: E402
from multiad_monai.networks import MultiAD  # noqa: E402
from multiad_monai.recipe import Recipe  # noqa: E402
from multiad_monai.transforms.dicom import register_dicom_reader  # noqa: E402
from tests.dicom import ct_volume, write_series  # noqa: E402

OBLIQUE = (0.9950042, 0.0998334, 0.0, -0.0998334, 0.9950042, 0.0)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> str:
    """Two CT series: one in its own folder without extensions (oblique), one with ``.dcm`` beside it."""
    root = tmp_path_factory.mktemp("dicom") / "PATIENT_DICOM"
    write_series(str(root / "ct"), ct_volume((6, 20, 24)), series_number=2, description="AX 5mm", orientation=OBLIQUE)
    write_series(str(root), ct_volume((5, 20, 24), seed=1), series_number=3, description="AX bone", extension=".dcm")
    return str(root)


@pytest.fixture(scope="module")
def inferer(tmp_path_factory, study) -> AnomalyInferer:
    """A tiny calibrated model whose pixel threshold lies inside the study's maps, so the label is partial."""
    torch.manual_seed(0)
    network = MultiAD(Recipe.paper(image_size=32))
    network.normalizer.fit_thresholds(torch.rand(8) + 1.0, torch.rand(8, 1, 32, 32))
    raw = torch.from_numpy(AnomalyInferer(network).predict_volume(os.path.join(study, "ct")).anomaly_map)
    level = torch.quantile(raw.flatten(), 0.97)
    network.normalizer.fit_thresholds(torch.rand(8) + 1.0, level + 1e-4 * torch.randn(8, 1, 32, 32))
    ckpt = str(tmp_path_factory.mktemp("ckpt") / "model.pt")
    torch.save(network.state_dict(), ckpt)
    return AnomalyInferer(network, batch_size=4, checkpoint=ckpt)


def _rows(folder) -> list[dict]:
    with open(os.path.join(folder, "scores.csv"), encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_dicom_and_a_nifti_copy_give_the_same_scores(inferer, study, tmp_path):
    loader = LoadImage(image_only=True)
    register_dicom_reader(loader)
    volume = loader(os.path.join(study, "ct"))
    os.makedirs(tmp_path / "nifti")
    nib.save(nib.Nifti1Image(volume.numpy(), volume.affine.numpy()), str(tmp_path / "nifti" / "copy.nii.gz"))
    inferer(os.path.join(study, "ct"), str(tmp_path / "from_dicom"))
    inferer(str(tmp_path / "nifti"), str(tmp_path / "from_nifti"))
    (dicom_row,), (nifti_row,) = _rows(tmp_path / "from_dicom"), _rows(tmp_path / "from_nifti")
    assert float(dicom_row["score"]) == pytest.approx(float(nifti_row["score"]), abs=1e-4)
    assert dicom_row["top_slices"] == nifti_row["top_slices"]
    dicom_map = nib.load(tmp_path / "from_dicom" / "2_AX_5mm_map.nii.gz")
    nifti_map = nib.load(tmp_path / "from_nifti" / "copy_map.nii.gz")
    np.testing.assert_allclose(dicom_map.get_fdata(), nifti_map.get_fdata(), atol=1e-4)
    np.testing.assert_allclose(dicom_map.affine, nifti_map.affine, atol=1e-4)


def test_a_study_gives_one_result_per_series_with_seg_and_heatmap(inferer, study, tmp_path):
    inputs = list_inputs(study)
    assert [s.name for s in inputs] == ["2_AX_5mm", "3_AX_bone"]
    rows = inferer(study, str(tmp_path / "out"))
    assert [(r["series"], r["series_uid"]) for r in rows] == [(s.name, s.uid) for s in inputs]
    assert rows[0]["image"] == os.path.join(study, "ct") and rows[1]["image"] == study
    names = set(os.listdir(tmp_path / "out"))
    for name in ("2_AX_5mm", "3_AX_bone"):
        assert {f"{name}_seg.dcm", f"{name}_heatmap.dcm", f"{name}_map.nii.gz", f"{name}_slices.csv"} <= names


@pytest.fixture(scope="module")
def results(inferer, study, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("results"))
    inferer(os.path.join(study, "ct"), out)
    return out


def test_seg_reads_back_as_the_label_on_the_same_slices(inferer, study, results):
    (series,) = list_inputs(os.path.join(study, "ct"))
    raw = torch.from_numpy(nib.load(os.path.join(results, "2_AX_5mm_map.nii.gz")).get_fdata().astype(np.float32))
    label = (inferer.network.normalize_map(raw).numpy() > 0.5).transpose(2, 1, 0)  # (slices, rows, columns)
    assert 0 < label.sum() < label.size / 4
    seg = hd.seg.segread(os.path.join(results, "2_AX_5mm_seg.dcm"))
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in series.files]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.uid
    assert (
        seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
        and seg.StudyInstanceUID == sources[0].StudyInstanceUID
    )
    uids = [s.SOPInstanceUID for s in sources]
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[1], assert_missing_frames_are_empty=True)
    np.testing.assert_array_equal(pixels[..., 0] > 0, label)
    assert seg.NumberOfFrames == int(label.any(axis=(1, 2)).sum())  # frames only where the label is non-empty
    description = seg.SegmentSequence[0]
    assert description.SegmentLabel == "anomaly" and description.SegmentAlgorithmType == "AUTOMATIC"
    algorithm = hd.AlgorithmIdentificationSequence.from_sequence(
        description.SegmentationAlgorithmIdentificationSequence
    )
    assert algorithm.name == "Multi-AD" and algorithm.parameters["checkpoint_sha256"] == inferer.checkpoint_sha256
    assert len(inferer.checkpoint_sha256) == 64 and "> 0.5" in algorithm.parameters["rule"]


def test_heatmap_is_the_normalised_map_on_the_source_frames(inferer, study, results):
    (series,) = list_inputs(os.path.join(study, "ct"))
    raw = torch.from_numpy(nib.load(os.path.join(results, "2_AX_5mm_map.nii.gz")).get_fdata().astype(np.float32))
    expected = inferer.network.normalize_map(raw).numpy().transpose(2, 1, 0)
    heatmap = pydicom.dcmread(os.path.join(results, "2_AX_5mm_heatmap.dcm"))
    assert heatmap.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    np.testing.assert_allclose(heatmap.pixel_array, np.clip(expected, 0, 1), atol=1e-6)
    positions = [f.PlanePositionSequence[0].ImagePositionPatient for f in heatmap.PerFrameFunctionalGroupsSequence]
    sources = [pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient for f in series.files]
    np.testing.assert_allclose(np.asarray(positions, float), np.asarray(sources, float), atol=1e-3)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools is not installed (.ci/run installs it)")
@pytest.mark.parametrize("name", ["2_AX_5mm_seg.dcm", "2_AX_5mm_heatmap.dcm"])
def test_results_pass_the_dicom_validator(results, name):
    result = subprocess.run(["dciodvfy", os.path.join(results, name)], capture_output=True, text=True)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    assert errors == []


def test_checkpoint_sha256_is_the_files(inferer, tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"abc")
    assert checkpoint_sha256(str(path)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_dicom_output_without_highdicom_names_the_extra(inferer, study, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(ImportError, match=r"needs highdicom, from the dicom extra: pip install"):
        inferer(os.path.join(study, "ct"), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")  # nothing half-written


def test_pyfunc_model_scores_each_series_of_a_study(inferer, study):
    model = MultiADPyfunc()
    model.inferer = inferer
    table = model.predict(None, {"image": [study]})
    assert list(table["series_uid"]) == [s.uid for s in list_inputs(study)]
    assert list(table["image"]) == [os.path.join(study, "ct"), study]
    assert table["score"].notna().all()


def test_a_folder_of_volumes_with_earlier_dicom_results_inside_lists_the_volumes(inferer, study, tmp_path):
    inferer(os.path.join(study, "ct"), str(tmp_path / "in" / "results"))  # SEG and Parametric Map under "in/"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4)), str(tmp_path / "in" / "scan.nii.gz"))
    assert list_inputs(str(tmp_path / "in")) == [str(tmp_path / "in" / "scan.nii.gz")]
