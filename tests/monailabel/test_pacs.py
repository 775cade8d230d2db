"""The MONAI Label app on a real PACS: Orthanc with its DICOMweb plugin, started here on 127.0.0.1.

The app starts offline (no dcmqi download), lists the PACS's image series, infers on them, stores a final label
back as a DICOM SEG (found by QIDO-RS, read back by highdicom as the same mask), triages and retrains on the
studies marked normal, and answers 503 while the PACS is down, then works again once it is back.
"""

from __future__ import annotations

import io
import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("monailabel", reason="the MONAI Label app needs the extra: pip install -e '.[monailabel]'")
hd = pytest.importorskip("highdicom")

import pydicom  # noqa: E402

from tests.bundles.helpers import ROOT  # noqa: E402
from tests.dicom import write_series  # noqa: E402
from tests.monailabel.studies import LESION, volume  # noqa: E402
from tests.monailabel.test_server import start_server, stop_server, wait_for  # noqa: E402
from tests.pacs import ORTHANC, Orthanc, free_port  # noqa: E402

pytestmark = [
    pytest.mark.slow,  # the real MONAI Label server and Orthanc
    pytest.mark.skipif(
        ORTHANC is None and not os.environ.get("CI"),
        reason="Orthanc is not installed (apt-get install orthanc orthanc-dicomweb; .ci/run installs it)",
    ),
]

NORMAL = ["normal0", "normal1", "normal2"]
STUDIES = [*NORMAL, "lesion0"]


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("orthanc"))
    orthanc = Orthanc(folder, free_port()).start()
    uids = {}
    for i, name in enumerate(STUDIES):
        stored = np.round(volume(name, lesion=name.startswith("lesion"))).astype(np.int16).transpose(2, 1, 0)
        files = write_series(os.path.join(folder, "export", name), stored, modality="MR", spacing=(2.0, 2.0),
                             slice_spacing=2.0, series_number=i + 1, description=name)  # fmt: skip
        orthanc.store(files)
        uids[name] = pydicom.dcmread(files[0]).SeriesInstanceUID
    orthanc.uids = uids
    try:
        yield orthanc
    finally:
        orthanc.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint, pacs):
    root = tmp_path_factory.mktemp("monailabel_pacs")
    app = str(root / "app")
    shutil.copytree(os.path.join(ROOT, "apps", "multiad"), app, ignore=shutil.ignore_patterns("model", "logs", "lib"))
    env = {
        "MONAI_LABEL_DICOMWEB_CACHE_PATH": str(root / "cache"),
        "MONAI_LABEL_DICOMWEB_CACHE_EXPIRY": "1",  # series stored later are listed at once
        "HOME": str(root),  # nothing written to the user's ~/.cache
    }
    server = start_server(app, pacs.dicomweb, checkpoint, str(root / "server.log"), models="brain", env=env)
    try:
        yield server
    finally:
        stop_server(server)


def test_starts_offline_and_lists_the_pacs_series(server, pacs):
    assert server.get("/info/").json()["models"]["brain"]["checkpoint"]["sha256"]
    with open(server.log, encoding="utf-8") as f:
        log = f.read()
    assert "dcmqi" not in log and "github" not in log.lower()
    stats = server.get("/datastore/?output=stats").json()  # image series by QIDO-RS (SEG, SR, ... left out)
    assert stats["total"] == len(STUDIES), stats


def test_infer_on_a_pacs_series_gives_its_label_and_heatmap(server, pacs):
    image = pacs.uids["lesion0"]
    answer = server.post(f"/infer/brain?image={image}&output=json")
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["dimension"] == 3 and result["shape"] == [24, 24, 12]
    assert result["top_slices"][0]["voxel_index"] in (4, 5, 6)  # the lesion's slices
    heat = server.post(f"/infer/brain?image={image}&output=image", data={"params": json.dumps({"result": "heatmap"})})
    assert heat.status_code == 200
    path = os.path.join(os.path.dirname(server.log), "heat.nii.gz")
    with open(path, "wb") as f:
        f.write(heat.content)
    assert nib.load(path).shape == (24, 24, 12)


def test_final_label_is_stored_in_the_pacs_as_seg(server, pacs, tmp_path):
    image = pacs.uids["lesion0"]
    series_dir = os.path.join(os.path.dirname(server.log), "cache")
    label_path = str(tmp_path / "lesion0.nii.gz")
    # the label in the series' geometry, as the viewer got it from /infer
    answer = server.post(f"/infer/brain?image={image}&output=image")
    with open(label_path, "wb") as f:
        f.write(answer.content)
    reference = nib.load(label_path)
    mask = np.zeros(reference.shape, np.uint8)
    mask[LESION] = 1
    nib.save(nib.Nifti1Image(mask, reference.affine), label_path)
    with open(label_path, "rb") as f:
        saved = server.put(f"/datastore/label?image={image}&tag=final", files={"label": ("lesion0.nii.gz", f)})
    assert saved.status_code == 200, saved.text + server.log_tail()
    (seg,) = pacs.series(Modality="SEG")
    study, seg_uid = seg["0020000D"]["Value"][0], seg["0020000E"]["Value"][0]
    from dicomweb_client import DICOMwebClient

    (dataset,) = DICOMwebClient(pacs.dicomweb).retrieve_series(study, seg_uid)
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    seg_object = hd.seg.segread(io.BytesIO(buffer.getvalue()))
    assert seg_object.ReferencedSeriesSequence[0].SeriesInstanceUID == image
    assert seg_object.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"
    sources = [pydicom.dcmread(os.path.join(root, f)) for root, _, fs in os.walk(series_dir) for f in fs
               if image in root and f.endswith(".dcm")]  # fmt: skip
    sources.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    pixels = seg_object.get_pixels_by_source_instance(
        [ds.SOPInstanceUID for ds in sources], segment_numbers=[1], assert_missing_frames_are_empty=True
    )[..., 0]
    assert int(pixels.sum()) == int(mask.sum())
    np.testing.assert_array_equal(pixels.transpose(2, 1, 0) > 0, mask > 0)  # ITK order: the label's own order


def test_triage_and_retraining_on_the_pacs_studies(server, pacs):
    scored = server.post("/scoring/anomaly_score?run_sync=true")
    assert scored.status_code == 200, scored.text
    assert scored.json()["brain"]["scored"] == len(STUDIES)
    first = server.post("/activelearning/most_anomalous", json={}).json()
    assert first["id"] in pacs.uids.values() and first["id"] != pacs.uids["lesion0"]  # lesion0 is labelled
    for name in NORMAL:
        marked = server.put(f"/datastore/image/info?image={pacs.uids[name]}", data={"info": '{"normal": true}'})
        assert marked.status_code == 200
    task = server.post("/train/brain", json={"epochs": 1, "max_iterations": 8, "image_size": 32, "batch_size": 4})
    assert task.status_code == 200, task.text
    done = wait_for(server, "train", timeout=420)
    assert done["status"] == "DONE", "\n".join(done.get("details", []))
    run = server.get("/info/").json()["train_stats"]["brain"]
    assert sorted(run["studies"]["normal"]) == sorted(pacs.uids[n] for n in NORMAL)
    assert run["studies"]["anomalous"] == [pacs.uids["lesion0"]]


def test_pacs_down_is_503_and_the_app_comes_back_with_it(server, pacs):
    image = pacs.uids["normal1"]
    shutil.rmtree(os.path.join(os.path.dirname(server.log), "cache"), ignore_errors=True)  # must fetch again
    pacs.stop()
    try:
        answer = server.post(f"/infer/brain?image={image}&output=json")
        assert answer.status_code == 503, answer.text
        assert "does not answer" in answer.json()["detail"] and pacs.dicomweb in answer.json()["detail"]
        info = server.get("/info/")  # it counts the PACS's studies: the same clear 503
        assert info.status_code == 503 and "does not answer" in info.json()["detail"]
        assert server.get("/train/").status_code == 200 and server.process.poll() is None  # the server stays up
    finally:
        pacs.start()
    answer = server.post(f"/infer/brain?image={image}&output=json")
    assert answer.status_code == 200, answer.text
    assert len(pacs.series(Modality="SEG")) == 1  # the stored SEG survived the outage
