"""The app's PACS datastore: MONAI Label's DICOMweb datastore (Orthanc, ...), offline and DICOM through.

MONAI Label 0.8.5 downloads dcmqi from GitHub at start-up when ``--studies`` is a DICOMweb address, converts every
series to NIfTI, and turns final labels into DICOM SEG with dcmqi. Here nothing is downloaded: each series is
cached as its DICOM folder and read by :mod:`multiad_monai.transforms.dicom` (as the bundles read it), and a
final label goes back to the PACS as a DICOM SEG written by highdicom
(:func:`multiad_monai.dicom_output.write_segmentation`, stored with STOW-RS), so every viewer of the PACS shows
it. The submitted label file is also kept in the local cache, where triage and retraining read it.

Series of non-image modalities (SEG, SR, presentation states, RT, key objects) are not studies to triage.
A PACS that does not answer raises :class:`PacsUnavailable`, which the app's routes answer with 503.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from typing import Any

import nibabel as nib
import numpy as np
import requests
from filelock import FileLock
from monai.transforms import LoadImage
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMwebClientX, DICOMWebDatastore
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore
from monailabel.datastore.utils.dicom import dicom_web_upload_dcm
from monailabel.interfaces.datastore import DefaultLabelTag

from multiad_monai.dicom_output import write_segmentation
from multiad_monai.dicomweb import NON_IMAGE_MODALITIES
from multiad_monai.transforms.dicom import DicomSeries, find_series, register_dicom_reader

__all__ = ["PacsDatastore", "PacsUnavailable", "label_on_series"]

logger = logging.getLogger(__name__)


class PacsUnavailable(RuntimeError):
    """The PACS did not answer; the request can be repeated once it is back."""


def _loader() -> LoadImage:
    loader = LoadImage(image_only=True)
    register_dicom_reader(loader)
    return loader


def label_on_series(label_path: str, series_dir: str) -> tuple[DicomSeries, np.ndarray]:
    """A label file of a series, on the series' voxels in ITK's array order ``(columns, rows, slices)``.

    A label stored in another voxel order of the same grid (a viewer saving RAS) is reoriented to it.

    Raises:
        ValueError: the label does not lie on the series' voxels (another grid or another series).
    """
    (series,) = find_series(series_dir)
    loader = _loader()
    volume, label = loader(series.files), loader(label_path)
    affine, label_affine = volume.affine.numpy(), label.affine.numpy()
    array = np.asarray(label)
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(label_affine), nib.orientations.io_orientation(affine)
    )
    array = nib.orientations.apply_orientation(array, transform)
    moved = label_affine @ nib.orientations.inv_ornt_aff(transform, label.shape)
    if array.shape != tuple(volume.shape) or not np.allclose(moved, affine, atol=1e-3):
        raise ValueError(
            f"the label {os.path.basename(label_path)} (shape {tuple(label.shape)}) does not lie on the voxels of "
            f"{series.label} (shape {tuple(volume.shape)}): submit a label in the series' own geometry"
        )
    return series, array


class PacsDatastore(DICOMWebDatastore):
    """MONAI Label's DICOMweb datastore without dcmqi and without NIfTI conversion (see the module).

    Args:
        url: the DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``.
        cache_path: where series are cached (default: MONAI Label's, ``~/.cache/monailabel/dicom/<hash>``).
    """

    def __init__(self, url: str, cache_path: str | None = None) -> None:
        client = DICOMwebClientX(
            url=url,
            qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
            wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
            stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX,
        )
        super().__init__(  # no request to the PACS yet: the cache folder only
            client=client,
            search_filter={},
            cache_path=cache_path or settings.MONAI_LABEL_DICOMWEB_CACHE_PATH.strip() or None,
            fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
            convert_to_nifti=False,
        )

    def _call(self, what: str, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except requests.ConnectionError as e:
            raise PacsUnavailable(
                f"the PACS at {self._client.base_url} does not answer ({what}): repeat the request once it is back"
            ) from e

    def list_images(self) -> list[str]:
        found = self._call("QIDO-RS series search", self._client.search_for_series, search_filters={})
        series = []
        for item in found:
            modality = (item.get("00080060", {}).get("Value") or [""])[0]
            if modality not in NON_IMAGE_MODALITIES:
                series.append(item["0020000E"]["Value"][0])
        self._register(series)
        return series

    def _register(self, image_ids: list[str]) -> None:
        """Record PACS series in the local datastore file, so that labels and info (``normal``) can be kept for
        them; the record's path is the series' cache folder, filled on first use."""
        with FileLock(self._lock_file):
            new = [i for i in image_ids if i not in self._datastore.objects]
            for image_id in new:
                os.makedirs(os.path.join(self._datastore.image_path(), image_id), exist_ok=True)
                info = {"ts": int(time.time()), "name": image_id}
                self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=""))
            if new:
                self._update_datastore_file(lock=False)

    def get_image_uri(self, image_id: str) -> str:
        self._register([image_id])
        return self._call(f"WADO-RS series {image_id}", super().get_image_uri, image_id)

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        return LocalDatastore.get_image_info(self, image_id)

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        """The label as submitted through the app, from the local cache (its SEG copy lives in the PACS)."""
        return LocalDatastore.get_label_uri(self, label_id, label_tag)

    def get_labeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        return LocalDatastore.get_labeled_images(self, label_tag, labels)

    def datalist(self, full_path: bool = True) -> list[dict[str, Any]]:
        return LocalDatastore.datalist(self, full_path)

    def save_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any], label_id: str = ""
    ) -> str:
        """Keep the label locally; a final one also goes to the PACS as a DICOM SEG of its series (STOW-RS)."""
        if label_tag == DefaultLabelTag.FINAL:
            series, label = label_on_series(label_filename, self.get_image_uri(image_id))
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "seg.dcm")
                write_segmentation(series, label, path, reviewed=True)
                seg_series = self._call("STOW-RS of the SEG", dicom_web_upload_dcm, path, self._client)
            label_info = {**label_info, "SeriesInstanceUID": seg_series, "stored_in_pacs": True}
            logger.info(f"stored the final label of {image_id} in the PACS as SEG series {seg_series}")
        return LocalDatastore.save_label(self, image_id, label_filename, label_tag, label_info)
