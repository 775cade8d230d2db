"""MONAI Label infer task: one study in, its anomaly label (or heat map) in the study's own geometry out.

Volumes (NIfTI, NRRD, what SimpleITK reads, a DICOM series folder or multi-frame file, read and checked by
:mod:`multiad_monai.transforms.dicom` as everywhere else) go through
:meth:`AnomalyInferer.predict_volume`; 2D images (PNG, JPEG, TIFF) through :meth:`AnomalyInferer.predict_images`.
The returned file is either

- ``result="label"`` (default): ``uint8``, 1 where the normalised anomaly map exceeds ``threshold`` (0.5 = the
  checkpoint's calibrated pixel threshold), which viewers load as a segmentation with one segment "anomaly";
- ``result="heatmap"``: the ``float32`` anomaly map normalised to ``[0, 1]`` (0 = normal mean, 0.5 = threshold);

with the input's shape and affine (NIfTI inputs keep their own header). The JSON holds the image score, its
normalised value, the anomalous flag and, for volumes, one score per axial slice and the most anomalous slices.
"""

from __future__ import annotations

import ctypes
import logging
import os
import tempfile
import threading
import time
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from PIL import Image

from multiad_monai.data.layouts import IMAGE_EXTENSIONS, VOLUME_EXTENSIONS
from multiad_monai.inference import AnomalyInferer
from multiad_monai.monailabel.models import BundleModel
from multiad_monai.transforms.array import SLICE_AXCODES, SLICE_AXIS
from multiad_monai.transforms.dicom import is_dicom_file

__all__ = ["AnomalyInferTask", "InputError", "check_infer_params", "RESULTS", "UPLOAD_NAME", "VOLUME_RESULT_EXTENSIONS"]

logger = logging.getLogger(__name__)

RESULTS = ("label", "heatmap")
VOLUME_RESULT_EXTENSIONS = (".nii.gz", ".nii", ".nrrd")
LABEL = "anomaly"
# request key naming an uploaded file as the user sent it (MONAI Label stores uploads under a temporary name)
UPLOAD_NAME = "upload_name"


class InputError(ValueError):
    """The study cannot be used: unreadable, not a 2D image or 3D volume, or of an unsupported type."""


def check_infer_params(params: dict[str, Any]) -> dict[str, Any]:
    """Validate this task's own request parameters and return them with defaults.

    Other keys (``device``, ``client_id``, ``label_info``, ... sent by MONAI Label clients) are left alone.

    Raises:
        ValueError: naming the parameter, the value and what is accepted.
    """
    result = params.get("result", "label")
    if result not in RESULTS:
        raise ValueError(f"params.result must be one of {list(RESULTS)}, got {result!r}")
    threshold = params.get("threshold", 0.5)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold < 1.0:
        raise ValueError(
            f"params.threshold must be a number in (0, 1) on the normalised map (0.5 = the calibrated threshold), "
            f"got {threshold!r}"
        )
    extension = params.get("result_extension") or ".nii.gz"
    if extension not in VOLUME_RESULT_EXTENSIONS:
        raise ValueError(f"params.result_extension must be one of {list(VOLUME_RESULT_EXTENSIONS)}, got {extension!r}")
    return {"result": result, "threshold": float(threshold), "result_extension": extension}


def input_kind(path: str) -> str:
    """``"image"`` (2D) or ``"volume"`` (3D, a DICOM series folder included); raises :class:`InputError` otherwise."""
    if os.path.isdir(path):
        return "volume"
    if not os.path.isfile(path):
        raise InputError(f"image file not found: {path}")
    name = path.lower()
    if name.endswith(VOLUME_EXTENSIONS) or is_dicom_file(path):  # a multi-frame DICOM file is a volume
        return "volume"
    if name.endswith(IMAGE_EXTENSIONS):
        return "image"
    raise InputError(
        f"unsupported file type {os.path.basename(path)!r}: expected a 3D volume {VOLUME_EXTENSIONS} or a 2D image "
        f"{IMAGE_EXTENSIONS}"
    )


def _input_message(error: BaseException, path: str, name: str | None = None) -> str:
    """The loader's first line, naming the study by file name (server paths stay on the server), or by ``name``:
    an upload's file name as the user sent it, instead of the temporary file MONAI Label stored it in."""
    lines = str(error).strip().splitlines()
    message = lines[0] if lines else type(error).__name__
    message = message.replace(os.path.dirname(os.path.abspath(path)) + os.sep, "")
    return message.replace(os.path.basename(path), name) if name else message


def slice_positions(
    affine: np.ndarray, shape: tuple[int, ...], slices: np.ndarray, axcodes: str = SLICE_AXCODES, axis: int = SLICE_AXIS
) -> list[dict]:
    """Where slice ``k`` of the model's slicing (``axcodes`` along ``axis``) lies in the input volume.

    Returns per slice the input's voxel axis and index, and the world coordinate (mm, RAS) of the slice centre
    along that direction: for axial slices the S coordinate 3D Slicer shows as the axial slice offset.
    """
    to_slicing = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(axcodes)
    )
    voxel_axis = int(np.nonzero(to_slicing[:, 0] == axis)[0][0])
    flipped = to_slicing[voxel_axis, 1] < 0
    world_axis = "RAS".index({"L": "R", "P": "A", "I": "S"}.get(axcodes[axis], axcodes[axis]))
    centre = (np.asarray(shape, dtype=float) - 1) / 2
    positions = []
    for k in slices:
        index = shape[voxel_axis] - 1 - int(k) if flipped else int(k)
        voxel = centre.copy()
        voxel[voxel_axis] = index
        world = float((affine @ np.r_[voxel, 1.0])[world_axis])
        positions.append({"slice": int(k), "voxel_axis": voxel_axis, "voxel_index": index, "world_mm": round(world, 3)})
    return positions


def _write_volume(array: np.ndarray, source: str, affine: np.ndarray, extension: str) -> str:
    """Save ``array`` with the source's geometry: NIfTI sources keep their header, others get ``affine``."""
    out = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
    if source.lower().endswith((".nii", ".nii.gz")):
        header = nib.load(source).header.copy()
        header.set_data_dtype(array.dtype)
        header.set_slope_inter(1.0, 0.0)
        nib.save(nib.Nifti1Image(array, affine, header=header), out)
    else:
        nib.save(nib.Nifti1Image(array, affine), out)
    if extension == ".nii.gz":
        return out
    converted = out[: -len(".nii.gz")] + extension
    sitk.WriteImage(sitk.ReadImage(out), converted)  # SimpleITK keeps the geometry across formats
    os.remove(out)
    return converted


def _malloc_trim() -> None:
    """Hand the heap pages freed by an inference back to the system (glibc keeps them in its arenas otherwise)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


class AnomalyInferTask(InferTask):
    """Anomaly label or heat map of one study with a served bundle's current checkpoint.

    Args:
        model: the served bundle and its checkpoint.
        max_concurrent: inferences run at once; further requests wait (bounds memory and CPU oversubscription).
    """

    def __init__(self, model: BundleModel, max_concurrent: int = 1) -> None:
        super().__init__(
            type=InferType.SEGMENTATION,
            labels={LABEL: 1},
            dimension=3,
            description=f"Multi-AD anomaly map ({model.name} bundle): label at the calibrated threshold or heat map",
            config={"result": list(RESULTS), "threshold": 0.5},
        )
        self.model = model
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._running = 0  # inferences running or waiting; the last one to end trims the heap
        self._count_lock = threading.Lock()

    def is_valid(self) -> bool:
        return True

    def get_path(self, validate: bool = True) -> str | None:
        path = self.model.checkpoint_path()
        return path if not validate or os.path.isfile(path) else None

    def info(self) -> dict[str, Any]:
        return {**super().info(), "checkpoint": self.model.info()}

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Run on ``request["image"]`` (a path); returns ``(result file, JSON)``.

        Raises:
            InputError: the study cannot be read or is neither a 2D image nor a 3D volume.
            ValueError: bad parameters (see :func:`check_infer_params`), or no usable checkpoint.
        """
        options = check_infer_params(request)
        path = request.get("image")
        if not isinstance(path, str) or not path:
            raise InputError("this model needs an image id from the datastore or an uploaded file")
        name = request.get(UPLOAD_NAME) if isinstance(request.get(UPLOAD_NAME), str) else None
        try:
            kind = input_kind(path)
        except InputError as e:
            raise InputError(_input_message(e, path, name)) from None
        start = time.time()
        with self._count_lock:
            self._running += 1
        try:
            with self._slots:
                waited = time.time() - start
                inferer, checkpoint = self.model.inferer()
                if kind == "volume":
                    result_file, result = self._volume(inferer, path, options, name)
                else:
                    result_file, result = self._image(inferer, path, options, name)
        finally:
            with self._count_lock:
                self._running -= 1
                last = self._running == 0
            if last:  # after a burst of requests the server's memory falls back (see benchmarks/monailabel_load.py)
                _malloc_trim()
        result.update(
            model=self.model.name,
            checkpoint=checkpoint.as_dict(),
            result=options["result"],
            threshold=options["threshold"],
            latencies={"wait": round(waited, 3), "total": round(time.time() - start, 3)},
        )
        return result_file, result

    def _scores(self, inferer: AnomalyInferer, scores: np.ndarray) -> np.ndarray:
        network = inferer.network
        return network.normalize_score(torch.as_tensor(scores)).cpu().numpy()

    def _output(self, inferer: AnomalyInferer, raw_map: np.ndarray, options: dict) -> tuple[np.ndarray, int]:
        network = inferer.network
        raw = torch.from_numpy(raw_map.astype(np.float32))
        normalized = network.normalize_map(raw).cpu().numpy()
        label = (normalized > options["threshold"]).astype(np.uint8)
        array = label if options["result"] == "label" else normalized.astype(np.float32)
        return array, int(label.sum())

    def _summary(self, inferer: AnomalyInferer, score: float) -> dict[str, Any]:
        network = inferer.network
        normalized = float(self._scores(inferer, np.asarray([score]))[0])
        return {
            "score": score,
            "normalized_score": normalized,
            "is_anomalous": normalized > 0.5,
            "image_threshold": float(network.image_threshold),
            "pixel_threshold": float(network.pixel_threshold),
        }

    def _volume(self, inferer: AnomalyInferer, path: str, options: dict, name: str | None) -> tuple[str, dict]:
        try:
            prediction = inferer.predict_volume(path)
        except ValueError as e:  # unreadable, or not a one-channel 3D volume: named by the inferer's loader
            raise InputError(_input_message(e, path, name)) from e
        shape = prediction.anomaly_map.shape
        array, n_anomalous = self._output(inferer, prediction.anomaly_map, options)
        result_file = _write_volume(array, path, prediction.affine, options["result_extension"])
        slice_scores = prediction.slice_scores.astype(float)
        recipe = inferer.network.recipe
        axis = recipe.slice_axis
        normalized = self._scores(inferer, slice_scores)
        top = np.argsort(-slice_scores, kind="stable")[: inferer.top_k_slices]
        top_slices = [
            {**position, "score": float(slice_scores[k]), "normalized_score": float(normalized[k])}
            for k, position in zip(top, slice_positions(prediction.affine, shape, top, recipe.slice_axcodes, axis))
        ]
        return result_file, {
            **self._summary(inferer, float(slice_scores.max())),
            "dimension": 3,
            "shape": list(shape),
            "anomalous_voxels": n_anomalous,
            "slicing": f"{recipe.slice_axcodes} orientation, axis {axis}: slice 0 = most inferior",
            "slice_scores": [round(float(s), 6) for s in slice_scores],
            "normalized_slice_scores": [round(float(s), 4) for s in normalized],
            "top_slices": top_slices,
        }

    def _image(self, inferer: AnomalyInferer, path: str, options: dict, name: str | None) -> tuple[str, dict]:
        try:
            _, _, raw_map, score = next(inferer.predict_images([path]))
        except ValueError as e:  # unreadable file or unsupported channels, named by the loader
            raise InputError(_input_message(e, path, name)) from e
        array, n_anomalous = self._output(inferer, raw_map, options)
        if options["result"] == "label":
            result_file = tempfile.NamedTemporaryFile(suffix=".png", delete=False).name
            Image.fromarray(array).save(result_file)
        else:
            result_file = tempfile.NamedTemporaryFile(suffix=".tif", delete=False).name
            Image.fromarray(array).save(result_file)  # mode "F": 32-bit float
        summary = self._summary(inferer, float(score))
        normalized = summary["normalized_score"]
        return result_file, {
            **summary,
            "dimension": 2,
            "shape": list(raw_map.shape),
            "anomalous_pixels": n_anomalous,
            "slice_scores": [round(float(score), 6)],
            "normalized_slice_scores": [round(normalized, 4)],
            "top_slices": [{"slice": 0, "score": float(score), "normalized_score": normalized}],
        }
