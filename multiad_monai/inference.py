"""Inference on 2D images and 3D volumes with a trained, calibrated :class:`MultiAD`.

One path serves the inference bundle and the MONAI Label app: 2D files stream through a DataLoader in
batches; a 3D volume is reoriented to RAS, cut into axial slices, scored in batches, and its slice maps
are stacked and mapped back to the input's own orientation, shape and affine.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.data import DataLoader, MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirst,
    EnsureChannelFirstd,
    LoadImage,
    LoadImaged,
    Orientation,
)
from PIL import Image

from multiad_monai.data.datasets import NamedErrorDataset, intensity_transform
from multiad_monai.data.layouts import IMAGE_EXTENSIONS, VOLUME_EXTENSIONS, file_stem
from multiad_monai.networks.multiad import MultiAD
from multiad_monai.transforms import EnsureRGB, EnsureRGBd, VolumeToSlices
from multiad_monai.visualize import overlay

__all__ = ["AnomalyInferer", "VolumePrediction", "list_inputs"]

logger = logging.getLogger(__name__)

CSV_COLUMNS = ["image", "score", "normalized_score", "is_anomalous", "top_slices"]


def list_inputs(input_path: str | None) -> list[str]:
    """One file, or the supported image/volume files of a folder (sorted); raises when there are none."""
    if not input_path:
        raise ValueError("input_path is required: one image/volume file or a folder of them (--input_path PATH)")
    if os.path.isfile(input_path):
        return [input_path]
    if not os.path.isdir(input_path):
        raise FileNotFoundError(f"input_path {input_path} does not exist")
    files = sorted(
        os.path.join(input_path, f)
        for f in os.listdir(input_path)
        if f.lower().endswith(IMAGE_EXTENSIONS + VOLUME_EXTENSIONS)
    )
    if not files:
        raise ValueError(f"no image or volume files in {input_path} (expected {IMAGE_EXTENSIONS + VOLUME_EXTENSIONS})")
    return files


def _is_volume(path: str) -> bool:
    return path.lower().endswith(VOLUME_EXTENSIONS)


@dataclass
class VolumePrediction:
    """Anomaly map of a volume in the input's geometry, with per-slice scores (slices along RAS axial)."""

    anomaly_map: np.ndarray  # raw map, same shape as the input volume
    affine: np.ndarray
    slice_scores: np.ndarray  # one per RAS axial slice
    worst_slice_overlay: np.ndarray  # (H, W, 3) uint8 of the most anomalous slice


class AnomalyInferer:
    """Score images and volumes with a calibrated :class:`MultiAD` and write what a person can use.

    Per 2D image: ``<stem>_map.npy`` (float map at the image's size), ``<stem>_overlay.png``. Per
    volume: ``<stem>_map.nii.gz`` (same shape and affine as the input) and an overlay of its most
    anomalous slice. One ``scores.csv`` row per input. Outputs are written to a temporary folder and
    moved into ``output_dir`` only when every input succeeded.

    Args:
        network: the trained model; must be calibrated (see ``MultiAD.calibrate``).
        device: where to run.
        batch_size: images (or slices) per forward pass.
        intensity, percentiles, hu_window: the training intensity mapping, see
            :func:`multiad_monai.data.datasets.intensity_transform`.
        resize_mode: ``"stretch"`` or ``"pad"`` (to a square first), as in training.
        num_workers: DataLoader workers for 2D inputs.
        top_k_slices: how many most anomalous slices of a volume the CSV lists.
    """

    def __init__(
        self,
        network: MultiAD,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        intensity: str = "percentile",
        percentiles: Sequence[float] = (0.0, 99.5),
        hu_window: Sequence[float] = (-200.0, 250.0),
        resize_mode: str = "stretch",
        num_workers: int = 0,
        top_k_slices: int = 3,
    ) -> None:
        if not network.is_calibrated:
            raise ValueError("the network is not calibrated: load a checkpoint written at the end of training")
        self.network = network.to(device).eval()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.scale = intensity_transform(intensity, percentiles, hu_window)
        self.pad = resize_mode == "pad"
        self.num_workers = num_workers
        self.top_k_slices = top_k_slices
        self.size = tuple(int(s) for s in network.input_size.tolist())

    @torch.no_grad()
    def _predict(self, images: Sequence[torch.Tensor]) -> Iterator[tuple[np.ndarray, float]]:
        """Bring ``(3, h, w)`` images to the training size (padded to a square first when training was), run,
        and bring each map back to ``(h, w)``."""
        boxes, batch = [], []
        for image in images:
            h, w = image.shape[1:]
            side = max(h, w) if self.pad else None
            top, left = ((side - h) // 2, (side - w) // 2) if side else (0, 0)
            if side:
                image = F.pad(image, (left, side - w - left, top, side - h - top))
            boxes.append((top, left, h, w, tuple(image.shape[1:])))
            batch.append(F.interpolate(image[None].float(), size=self.size, mode="bilinear", antialias=True)[0])
        result = self.network(torch.stack(batch).to(self.device))
        for (top, left, h, w, padded), anomaly_map, score in zip(boxes, result.anomaly_map, result.pred_score):
            restored = F.interpolate(anomaly_map[None], size=padded, mode="bilinear")[0, 0]
            yield restored[top : top + h, left : left + w].cpu().numpy(), float(score)

    def predict_images(self, paths: Sequence[str]) -> Iterator[tuple[str, np.ndarray, np.ndarray, float]]:
        """Yield ``(path, image (3, H, W) in [0, 1], raw map (H, W), score)`` per 2D file, in batches."""
        transform = Compose(
            [
                LoadImaged("image", reader="PILReader", reverse_indexing=False, image_only=True, dtype=None),
                EnsureChannelFirstd("image"),
                self.scale,
                EnsureRGBd("image"),
            ]
        )
        dataset = NamedErrorDataset([{"image": p, "path": p} for p in paths], transform=transform)
        # images of different sizes cannot be stacked: batches stay lists, `_predict` resizes
        loader = DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=list)
        for items in loader:
            images = [item["image"].as_tensor() for item in items]
            for item, image, (anomaly_map, score) in zip(items, images, self._predict(images)):
                yield item["path"], image.numpy(), anomaly_map, score

    def predict_volume(self, path: str) -> VolumePrediction:
        """Slice-wise prediction of one 3D volume, mapped back to the input's geometry."""
        volume = EnsureChannelFirst()(LoadImage(image_only=True)(path))
        orientation = Orientation(axcodes="RAS")
        ras = orientation(volume)
        scaled = self.scale({"image": ras})["image"]
        slices = VolumeToSlices(axis=2)(scaled)  # also rejects anything but one-channel 3D volumes
        to_rgb = EnsureRGB()
        maps, scores = [], []
        for start in range(0, len(slices), self.batch_size):
            for anomaly_map, score in self._predict([to_rgb(s) for s in slices[start : start + self.batch_size]]):
                maps.append(anomaly_map)
                scores.append(score)
        ras_map = MetaTensor(torch.from_numpy(np.stack(maps, -1))[None], meta=dict(ras.meta))
        ras_map.applied_operations = list(ras.applied_operations)
        worst = int(np.argmax(scores))
        worst_overlay = overlay(
            scaled[0, :, :, worst].numpy(), self.network.normalize_map(ras_map[0, :, :, worst].as_tensor()).numpy()
        )
        restored = orientation.inverse(ras_map)[0].numpy()  # back to the input's axis order and flips
        if path.lower().endswith((".nii", ".nii.gz")):
            affine = nib.load(path).affine  # exactly the input's header affine
        else:
            affine = np.asarray(volume.meta["original_affine"])
        return VolumePrediction(restored, affine, np.asarray(scores), worst_overlay)

    def __call__(self, input_path: str, output_dir: str) -> list[dict]:
        """Score every input under ``input_path`` and write maps, overlays and ``scores.csv`` to ``output_dir``."""
        paths = list_inputs(input_path)
        parent = os.path.dirname(os.path.abspath(output_dir))
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(dir=parent, prefix=".predictions-")
        try:
            rows = self._write_images(paths, staging) + self._write_volumes(paths, staging)
            rows.sort(key=lambda row: paths.index(row["image"]))
            with open(os.path.join(staging, "scores.csv"), "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
            os.makedirs(output_dir, exist_ok=True)
            for name in os.listdir(staging):
                os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info(f"scored {len(rows)} inputs; results in {output_dir}")
        return rows

    def _row(self, path: str, score: float, top_slices: str = "") -> dict:
        normalized = float(self.network.normalize_score(torch.tensor(score, device=self.network.score_mean.device)))
        return {
            "image": path,
            "score": f"{score:.6f}",
            "normalized_score": f"{normalized:.4f}",
            "is_anomalous": int(normalized > 0.5),
            "top_slices": top_slices,
        }

    def _write_images(self, paths: list[str], out: str) -> list[dict]:
        images = [p for p in paths if not _is_volume(p)]
        rows = []
        for path, image, anomaly_map, score in self.predict_images(images) if images else []:
            stem = file_stem(path)
            np.save(os.path.join(out, f"{stem}_map.npy"), anomaly_map.astype(np.float32))
            normalized = self.network.normalize_map(torch.from_numpy(anomaly_map)).numpy()
            Image.fromarray(overlay(image, normalized)).save(os.path.join(out, f"{stem}_overlay.png"))
            rows.append(self._row(path, score))
        return rows

    def _write_volumes(self, paths: list[str], out: str) -> list[dict]:
        rows = []
        for path in (p for p in paths if _is_volume(p)):
            prediction = self.predict_volume(path)
            stem = file_stem(path)
            nifti = nib.Nifti1Image(prediction.anomaly_map.astype(np.float32), prediction.affine)
            nib.save(nifti, os.path.join(out, f"{stem}_map.nii.gz"))
            Image.fromarray(prediction.worst_slice_overlay).save(os.path.join(out, f"{stem}_overlay.png"))
            top = np.argsort(-prediction.slice_scores)[: self.top_k_slices]
            rows.append(self._row(path, float(prediction.slice_scores.max()), ";".join(str(int(i)) for i in top)))
        return rows
