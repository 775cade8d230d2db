"""An archive on a PACS over DICOMweb: list its image series (QIDO-RS), fetch one into a folder (WADO-RS).

Archive triage (:mod:`multiad_monai.archive_triage`) takes ``--input_path http://127.0.0.1:8042/dicom-web``: every
process lists the same series, then fetches only its share, one series at a time, into ``<output_dir>/cache/``;
a fetched series is read and checked as any DICOM folder (:mod:`multiad_monai.transforms.dicom`). Series of
non-image modalities (SEG, SR, presentation states, RT, key objects) are not studies. Needs ``dicomweb-client``
(the ``dicom`` extra).
"""

from __future__ import annotations

import os
import shutil

from multiad_monai.transforms.dicom import DICOM_EXTRA, DicomSeries, find_series

__all__ = ["NON_IMAGE_MODALITIES", "fetch_series", "image_series", "is_dicomweb"]

NON_IMAGE_MODALITIES = {"SEG", "SR", "PR", "RTSTRUCT", "RTPLAN", "RTDOSE", "KO", "DOC", "REG"}


def is_dicomweb(path: str | None) -> bool:
    """An ``http(s)://`` address: a DICOMweb root rather than a file or folder."""
    return str(path or "").startswith(("http://", "https://"))


def _client(url: str):
    try:
        from dicomweb_client import DICOMwebClient
    except ImportError:
        raise ImportError(f"reading studies from a DICOMweb address needs dicomweb-client: {DICOM_EXTRA}") from None
    return DICOMwebClient(url)


def _value(item: dict, tag: str, default=""):
    values = item.get(tag, {}).get("Value") or [default]
    return values[0]


def image_series(url: str) -> list[DicomSeries]:
    """The PACS's image series as :class:`DicomSeries` without files yet, ordered by study and series UID.

    Raises:
        ValueError: the PACS holds no image series.
    """
    found = _client(url).search_for_series(get_remaining=True)
    series = [
        DicomSeries(
            uid=_value(item, "0020000E"),
            files=[],
            description=str(_value(item, "0008103E")),
            number=int(_value(item, "00200011", 0) or 0),
            modality=str(_value(item, "00080060")),
            study_uid=_value(item, "0020000D"),
        )
        for item in found
        if _value(item, "00080060") not in NON_IMAGE_MODALITIES
    ]
    if not series:
        raise ValueError(f"the PACS at {url} holds no image series (QIDO-RS found {len(found)} series)")
    return sorted(series, key=lambda s: (s.study_uid, s.uid))


def fetch_series(url: str, series: DicomSeries, cache_dir: str) -> DicomSeries:
    """Fetch ``series`` into ``cache_dir/<series UID>/`` (once: the folder appears complete or not at all), check
    it, and fill in its files."""
    folder = os.path.join(cache_dir, series.uid)
    if not os.path.isdir(folder):
        partial = folder + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        for dataset in _client(url).retrieve_series(series.study_uid, series.uid):
            dataset.save_as(os.path.join(partial, f"{dataset.SOPInstanceUID}.dcm"))
        os.replace(partial, folder)
    (found,) = find_series(folder)
    series.files, series.frames, series.transfer_syntaxes = found.files, found.frames, found.transfer_syntaxes
    return series
