"""The app's building blocks without a server: reviewed studies, retrain datasets, parameters, slice positions."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("monailabel", reason="the MONAI Label app needs the extra: pip install -e '.[monailabel]'")

from monailabel.datastore.local import LocalDatastore  # noqa: E402

from multiad_monai.data.layouts import index_dataset  # noqa: E402
from multiad_monai.monailabel.infer import AnomalyInferTask, check_infer_params, slice_positions  # noqa: E402
from multiad_monai.monailabel.models import BundleModel  # noqa: E402
from multiad_monai.monailabel.studies import build_dataset, review  # noqa: E402
from multiad_monai.monailabel.train import bundle_defaults, check_train_params  # noqa: E402
from tests.bundles.helpers import ROOT  # noqa: E402
from tests.monailabel.studies import save_volume, write_dicom_series, write_png  # noqa: E402


def _datastore(folder: str, names: list[str]) -> LocalDatastore:
    for name in names:
        if name.endswith(".png"):
            write_png(os.path.join(folder, name))
        else:
            save_volume(os.path.join(folder, name), lesion=name.startswith("lesion"))
    return LocalDatastore(folder, extensions=["*.nii.gz", "*.png"])


def _label(datastore: LocalDatastore, tmp_path, image_id: str, lesion: bool) -> None:
    reference = nib.load(datastore.get_image_uri(image_id))
    data = np.zeros(reference.shape, dtype=np.uint8)
    if lesion:
        data[6:14, 6:14, 4:7] = 1
    path = str(tmp_path / f"{image_id}_label.nii.gz")
    nib.save(nib.Nifti1Image(data, reference.affine), path)
    datastore.save_label(image_id, path, "final", {})


def test_review_reads_flags_and_labels(tmp_path):
    datastore = _datastore(str(tmp_path / "studies"), ["a.nii.gz", "b.nii.gz", "c.nii.gz", "lesion.nii.gz", "d.png"])
    datastore.update_image_info("a", {"normal": True})
    datastore.update_image_info("b", {"normal": "true"})
    _label(datastore, tmp_path, "c", lesion=False)  # an empty submitted label = reviewed normal
    _label(datastore, tmp_path, "lesion", lesion=True)
    datastore.update_image_info("d", {"normal": False})
    reviewed = review(datastore)
    assert sorted(reviewed.normal) == ["a", "b", "c"]
    assert sorted(reviewed.anomalous) == ["lesion"]


@pytest.mark.parametrize("with_lesion", [True, False])
def test_build_dataset_writes_a_volumes_layout(tmp_path, with_lesion):
    datastore = _datastore(str(tmp_path / "studies"), ["a.nii.gz", "b.nii.gz", "c.nii.gz", "lesion.nii.gz"])
    for image_id in "abc":
        datastore.update_image_info(image_id, {"normal": True})
    if with_lesion:
        _label(datastore, tmp_path, "lesion", lesion=True)
    summary = build_dataset(review(datastore), str(tmp_path / "dataset"))
    layout, splits = index_dataset(str(tmp_path / "dataset"))
    assert layout == "volumes" and summary["normal"] == ["a", "b", "c"]
    assert [os.path.basename(i["image"]) for i in splits["train"]] == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    test = [os.path.basename(i["image"]) for i in splits["test"]]
    assert test == (["lesion.nii.gz"] if with_lesion else ["a.nii.gz"])  # no lesion label: one normal study
    mask = nib.load(splits["test"][0]["mask"]).get_fdata()
    assert (mask.sum() > 0) == with_lesion


def test_build_dataset_of_2d_images_writes_an_mvtec_layout(tmp_path):
    datastore = _datastore(str(tmp_path / "studies"), ["p0.png", "p1.png", "p2.png", "v.nii.gz"])
    for image_id in ("p0", "p1", "p2", "v"):
        datastore.update_image_info(image_id, {"normal": True})
    summary = build_dataset(review(datastore), str(tmp_path / "dataset"))
    layout, splits = index_dataset(str(tmp_path / "dataset"))
    assert layout == "mvtec" and summary["left_out"] == ["v"] and len(splits["train"]) == 3


def test_too_few_normal_studies_say_how_to_mark_them(tmp_path):
    datastore = _datastore(str(tmp_path / "studies"), ["a.nii.gz", "b.nii.gz"])
    datastore.update_image_info("a", {"normal": True})
    with pytest.raises(ValueError, match=r'at least 3 studies marked normal, found 1.*info=\{"normal": true\}'):
        build_dataset(review(datastore), str(tmp_path / "dataset"))


DEFAULTS = bundle_defaults(os.path.join(ROOT, "bundles", "brain"))


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"epochs": 2, "image_size": 64, "learning_rate": 1, "model": "brain", "gpus": "all"}, None),
        ({"amp": True, "betas": [0.9, 0.99], "device": "cpu"}, None),
        ({"epochz": 1}, "unknown train parameter 'epochz'"),
        ({"epochs": "many"}, "'epochs' must be a whole number or null"),
        ({"epochs": True}, "'epochs' must be a whole number or null"),
        ({"epochs": 0}, "'epochs' must be >= 1, got 0"),
        ({"epochs": None, "max_iterations": 50}, None),
        ({"image_size": 16}, "'image_size' must be >= 32, got 16"),
        ({"learning_rate": float("nan")}, "'learning_rate' must be a finite number"),
        ({"dataset_dir": "/data"}, "'dataset_dir' is set by the app"),
    ],
)
def test_train_params(params, expected):
    assert DEFAULTS["epochs"] is None and DEFAULTS["image_size"] == 192  # resolved through bundles/common macros
    if expected is None:
        assert set(check_train_params(DEFAULTS, params)) == set(params) - {"model", "gpus"}
    else:
        with pytest.raises(ValueError, match=expected):
            check_train_params(DEFAULTS, params)


@pytest.mark.parametrize(
    "params, expected",
    [
        ({}, None),
        ({"result": "heatmap", "threshold": 0.3, "client_id": "slicer", "result_extension": ".nrrd"}, None),
        ({"result": "map"}, "params.result must be one of"),
        ({"threshold": 1.5}, "params.threshold must be a number in"),
        ({"threshold": "high"}, "params.threshold must be a number in"),
        ({"result_extension": ".png"}, "params.result_extension must be one of"),
    ],
)
def test_infer_params(params, expected):
    if expected is None:
        assert check_infer_params(params)["result"] == params.get("result", "label")
    else:
        with pytest.raises(ValueError, match=expected):
            check_infer_params(params)


@pytest.mark.parametrize(
    "affine, voxel_axis, flipped",
    [
        (np.diag([2.0, 2.0, 3.0, 1.0]), 2, False),  # RAS
        (np.diag([-1.0, -1.0, -2.5, 1.0]), 2, True),  # LPI: the file runs superior to inferior
        (np.array([[0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]]), 1, False),  # S along axis 1
    ],
)
def test_slice_positions_map_to_the_input_axis(affine, voxel_axis, flipped):
    shape = (6, 7, 8)
    (position,) = slice_positions(affine, shape, np.array([1]))
    index = shape[voxel_axis] - 2 if flipped else 1
    assert (position["voxel_axis"], position["voxel_index"]) == (voxel_axis, index)
    voxel = (np.asarray(shape) - 1) / 2
    voxel[voxel_axis] = index
    assert position["world_mm"] == pytest.approx((affine @ np.r_[voxel, 1])[2])


def test_dicom_series_folder_gets_a_label_in_its_geometry(tmp_path, checkpoint):
    """A DICOMweb datastore hands a series as a folder of slices; the label comes back with its geometry."""
    source = write_dicom_series(str(tmp_path / "series"))
    model = BundleModel("brain", os.path.join(ROOT, "bundles", "brain"), checkpoint, str(tmp_path / "runs"), "cpu")
    path, result = AnomalyInferTask(model)({"image": str(tmp_path / "series")})
    label = sitk.ReadImage(path)
    assert label.GetSize() == source.GetSize() == (24, 24, 12) and result["dimension"] == 3
    for get in ("GetSpacing", "GetOrigin", "GetDirection"):
        assert np.allclose(getattr(label, get)(), getattr(source, get)()), get
    top = result["top_slices"][0]
    assert top["voxel_index"] in (4, 5, 6) and top["world_mm"] == pytest.approx(5.0 + 3.0 * top["voxel_index"])
    os.remove(path)
