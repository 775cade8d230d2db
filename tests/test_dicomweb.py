"""Archive triage of a real PACS (Orthanc over DICOMweb): each series fetched once, scored, ranked; a rerun skips."""

from __future__ import annotations

import csv
import os

import pydicom
import pytest

pytest.importorskip("dicomweb_client")
pytest.importorskip("highdicom")

from multiad_monai.archive_triage import ArchiveTriage  # noqa: E402
from multiad_monai.checkpoint import load_model  # noqa: E402
from multiad_monai.dicomweb import image_series, is_dicomweb  # noqa: E402
from multiad_monai.inference import AnomalyInferer  # noqa: E402
from tests.dicom import ct_volume, write_series  # noqa: E402
from tests.pacs import ORTHANC, Orthanc, free_port  # noqa: E402
from tests.triage_data import tiny_checkpoints  # noqa: E402

pytestmark = [
    pytest.mark.slow,  # a real Orthanc
    pytest.mark.skipif(
        ORTHANC is None and not os.environ.get("CI"),
        reason="Orthanc is not installed (apt-get install orthanc orthanc-dicomweb; .ci/run installs it)",
    ),
]


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("orthanc"))
    orthanc = Orthanc(folder, free_port()).start()
    export = os.path.join(folder, "export")
    for i in range(3):
        orthanc.store(write_series(os.path.join(export, f"ct{i}"), ct_volume(seed=i), series_number=i + 1))
    segmentation = pydicom.dcmread(os.path.join(export, "ct0", "image_0"))  # a non-image series: left out
    segmentation.Modality, segmentation.SeriesInstanceUID = "SR", pydicom.uid.generate_uid()
    orthanc.store_datasets([segmentation])
    try:
        yield orthanc, export
    finally:
        orthanc.stop()


class CountingInferer(AnomalyInferer):
    def __init__(self, ckpt_path: str) -> None:
        super().__init__(load_model(ckpt_path), batch_size=4, checkpoint=ckpt_path)
        self.scored: list[str] = []

    def write_results(self, inputs, names, out):
        self.scored += [item.uid for item in inputs]
        return super().write_results(inputs, names, out)


def test_pacs_archive_is_fetched_scored_ranked_and_skipped_on_rerun(pacs, tmp_path):
    orthanc, export = pacs
    assert is_dicomweb(orthanc.dicomweb) and not is_dicomweb(export)
    series = image_series(orthanc.dicomweb)
    assert [s.number for s in sorted(series, key=lambda s: s.number)] == [1, 2, 3]  # the SR series is no study
    os.makedirs(tmp_path / "ckpt")
    ckpt, _ = tiny_checkpoints(str(tmp_path / "ckpt"), os.path.join(export, "ct0"))
    out = str(tmp_path / "out")
    inferer = CountingInferer(ckpt)
    records = ArchiveTriage(inferer)(orthanc.dicomweb, out)
    assert sorted(r.series_uid for r in records) == sorted(s.uid for s in series) == sorted(inferer.scored)
    assert sorted(os.listdir(os.path.join(out, "cache"))) == sorted(s.uid for s in series)  # one fetch each
    with open(os.path.join(out, "scores.csv"), encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["normalized_score"]) for r in rows] == sorted((float(r["normalized_score"]) for r in rows),
                                                                  reverse=True)  # fmt: skip
    assert all(os.path.isfile(os.path.join(out, f"{r['output']}_seg.dcm")) for r in rows)
    again = CountingInferer(ckpt)
    ArchiveTriage(again)(orthanc.dicomweb, out)
    assert again.scored == []  # the same checkpoint: every series skipped, nothing fetched again


def test_pacs_down_is_a_named_failure_and_the_rerun_completes(pacs, tmp_path):
    orthanc, export = pacs
    os.makedirs(tmp_path / "ckpt")
    ckpt, _ = tiny_checkpoints(str(tmp_path / "ckpt"), os.path.join(export, "ct0"))
    out = str(tmp_path / "out")
    triage = ArchiveTriage(AnomalyInferer(load_model(ckpt), checkpoint=ckpt))
    series = image_series(orthanc.dicomweb)
    orthanc.stop()
    try:
        import multiad_monai.archive_triage as module

        original = module.image_series
        module.image_series = lambda url: series  # listed before the PACS went away
        with pytest.raises(RuntimeError, match=r"3 of 3 studies could not be scored"):
            triage(orthanc.dicomweb, out)
    finally:
        module.image_series = original
        orthanc.start()
    records = ArchiveTriage(AnomalyInferer(load_model(ckpt), checkpoint=ckpt))(orthanc.dicomweb, out)
    assert len(records) == 3
