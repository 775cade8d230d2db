"""The infer task on DICOM inputs: a multi-frame file is a volume, a broken series is a named 4xx input error."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("monailabel", reason="the MONAI Label app needs the extra: pip install -e '.[monailabel]'")
hd = pytest.importorskip("highdicom")

import pydicom  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from multiad_monai.monailabel.infer import AnomalyInferTask, InputError  # noqa: E402
from multiad_monai.monailabel.models import BundleModel  # noqa: E402
from tests.bundles.helpers import ROOT  # noqa: E402
from tests.dicom import ct_volume, write_series  # noqa: E402


@pytest.fixture
def task(tmp_path, checkpoint) -> AnomalyInferTask:
    return AnomalyInferTask(
        BundleModel("brain", os.path.join(ROOT, "bundles", "brain"), checkpoint, str(tmp_path), "cpu")
    )


def test_multi_frame_file_gets_a_label_in_its_geometry(task, tmp_path):
    files = write_series(str(tmp_path / "series"), ct_volume((8, 24, 24)), modality="MR")
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage([pydicom.dcmread(f) for f in files], hd.UID(), 9, hd.UID(), 1)
    enhanced.save_as(str(tmp_path / "enhanced.dcm"))
    path, result = task({"image": str(tmp_path / "enhanced.dcm")})
    label, series = sitk.ReadImage(path), sitk.ReadImage(files)  # files in slice order: ITK's own geometry
    assert label.GetSize() == series.GetSize() == (24, 24, 8) and result["dimension"] == 3
    for get in ("GetSpacing", "GetOrigin", "GetDirection"):
        assert np.allclose(getattr(label, get)(), getattr(series, get)(), atol=1e-4), get
    os.remove(path)


def test_series_with_a_missing_slice_is_a_named_input_error(task, tmp_path):
    write_series(str(tmp_path / "series"), ct_volume((8, 24, 24)), modality="MR", skip=(4,))
    with pytest.raises(InputError, match=r"uneven slice spacing: 2.5 mm between most slices but 5 mm .*about 1 slices"):
        task({"image": str(tmp_path / "series")})
