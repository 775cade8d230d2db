"""Inference on 2D images and 3D volumes with a trained, calibrated :class:`MultiAD`.

One path serves the inference bundle and the MONAI Label app: 2D files stream through a DataLoader in
batches; a 3D volume (a file, or a DICOM series) is reoriented to the recipe's slice orientation, cut into axial
slices, scored in batches, and its slice maps are stacked and mapped back to the input's own orientation, shape
and affine. Preprocessing comes from the network's recipe, through the same chains training and evaluation use.
A DICOM series also gets its label as a DICOM SEG and its heat map as a Parametric Map
(:mod:`multiad_monai.dicom_output`).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.data import DataLoader, MetaTensor
from monai.transforms import Compose
from PIL import Image

from multiad_monai.checkpoint import checkpoint_sha256, load_model
from multiad_monai.data.datasets import NamedErrorDataset, apply_named
from multiad_monai.data.layouts import IMAGE_EXTENSIONS, VOLUME_EXTENSIONS, file_stem
from multiad_monai.dicom_output import write_heatmap, write_segmentation
from multiad_monai.networks.inputs import check_images
from multiad_monai.networks.multiad import MultiAD
from multiad_monai.transforms.dicom import DicomSeries, NoImageSeries, find_series, is_dicom_file, is_dicom_input
from multiad_monai.transforms.preprocessing import (
    image_transform,
    network_input,
    resize_transform,
    slice_transform,
    slicing_transform,
    volume_transform,
)
from multiad_monai.utils import check_path, check_writable, staged_dir
from multiad_monai.visualize import overlay

__all__ = [
    "CSV_COLUMNS",
    "AnomalyInferer",
    "Input",
    "VolumePrediction",
    "check_output_dir",
    "input_source",
    "is_volume",
    "list_inputs",
    "load_inferer",
    "output_names",
]

logger = logging.getLogger(__name__)

CSV_COLUMNS = ["image", "score", "normalized_score", "is_anomalous", "top_slices", "series", "series_uid"]

Input = str | DicomSeries  # an image or volume file, or one DICOM series


def list_inputs(input_path: str | None) -> list[Input]:
    """What ``input_path`` holds: one file, one DICOM series or study, or a folder of them.

    A folder gives its image and volume files (sorted), then every DICOM image series found in it and its
    sub-folders (one input per series, see :func:`multiad_monai.transforms.dicom.find_series`); raises when there
    are none.
    """
    if not input_path:
        raise ValueError(
            "input_path is required: one image/volume file, a DICOM series or study folder, or a folder of them "
            "(--input_path PATH)"
        )
    check_path(input_path, "input_path")
    if os.path.isfile(input_path):
        return list(find_series(input_path)) if is_dicom_file(input_path) else [input_path]
    if not os.path.isdir(input_path):
        raise FileNotFoundError(f"input_path {input_path} does not exist")
    files = sorted(
        os.path.join(input_path, f)
        for f in os.listdir(input_path)
        if f.lower().endswith(IMAGE_EXTENSIONS + VOLUME_EXTENSIONS)
    )
    try:
        series = find_series(input_path) if is_dicom_input(input_path) else []
    except NoImageSeries:  # e.g. the DICOM results of an earlier run in a sub-folder, beside image files
        if not files:
            raise
        series = []
    if not files and not series:
        raise ValueError(
            f"no image or volume files in {input_path} (expected {IMAGE_EXTENSIONS + VOLUME_EXTENSIONS} or DICOM "
            "series)"
        )
    return files + series


def output_names(inputs: Sequence[Input]) -> dict[Input, str]:
    """The name each input's outputs are written under.

    A file's stem, or its whole file name (dots as ``_``) when two inputs share a stem (``scan.png`` and
    ``scan.jpg`` give ``scan_png`` and ``scan_jpg``); a DICOM series' number and description (``3_AX_T2``), with
    the end of its UID when two series share them.
    """
    stems = [item.name if isinstance(item, DicomSeries) else file_stem(item) for item in inputs]
    names = {}
    for item, stem in zip(inputs, stems):
        if stems.count(stem) == 1:
            names[item] = stem
        elif isinstance(item, DicomSeries):
            names[item] = f"{stem}_{item.uid.rsplit('.', 1)[-1][-8:]}"
        else:
            names[item] = os.path.basename(item).replace(".", "_")
    return names


def is_volume(item: Input) -> bool:
    """A DICOM series or a volume file (NIfTI, NRRD, ...), not a 2D image."""
    return isinstance(item, DicomSeries) or item.lower().endswith(VOLUME_EXTENSIONS)


def input_source(item: Input) -> str:
    """Where an input lies: its file, or the folder (multi-frame file) of a DICOM series."""
    if isinstance(item, DicomSeries):
        return item.files[0] if item.frames else os.path.commonpath(item.files)
    return item


def check_output_dir(input_path: str, output_dir: str) -> None:
    """Refuse a missing ``output_dir``, one the bundle parser would mangle or that cannot be written, or the input
    folder itself."""
    if not output_dir:
        raise ValueError("output_dir is required (--output_dir DIR): maps, overlays and scores.csv go there")
    check_path(output_dir, "output_dir")
    check_writable(output_dir, "output_dir", folder=True)  # before the work, not after it
    if os.path.isdir(input_path) and os.path.realpath(input_path) == os.path.realpath(output_dir):
        raise ValueError(
            f"output_dir {output_dir} is the input folder: a rerun would score its own maps and overlays; "
            "pass another --output_dir (a sub-folder is fine)"
        )


@dataclass
class VolumePrediction:
    """Anomaly map of a volume in the input's geometry, with per-slice scores (slices along the recipe's axis)."""

    anomaly_map: np.ndarray  # raw map, same shape as the input volume
    affine: np.ndarray
    slice_scores: np.ndarray  # one per slice, in the recipe's slice orientation (as data_prep numbers them)
    worst_slice_overlay: np.ndarray  # (H, W, 3) uint8 of the most anomalous slice


class AnomalyInferer:
    """Score images and volumes with a calibrated :class:`MultiAD` and write what a person can use.

    Preprocessing is rebuilt from the network's recipe by :mod:`multiad_monai.transforms.preprocessing`, the
    same chains training and evaluation use; maps go back to each input's geometry through their inverse.

    Per 2D image: ``<stem>_map.npy`` (float map at the image's size), ``<stem>_overlay.png``. Per volume:
    ``<stem>_map.nii.gz`` (same shape and affine as the input), ``<stem>_slices.csv`` (one score per slice,
    numbered as data_prep numbers its PNG slices) and an overlay of its most anomalous slice. Per DICOM series
    also ``<name>_seg.dcm`` (the label at the calibrated threshold as a DICOM Segmentation) and
    ``<name>_heatmap.dcm`` (the normalised map as a Parametric Map), both referencing the series. One
    ``scores.csv`` row per input. Outputs are written to a temporary folder and moved into ``output_dir``
    only when every input succeeded.

    Args:
        network: the trained model; must be calibrated (see ``multiad_monai.checkpoint.load_model``).
        device: where to run.
        batch_size: images (or slices) per forward pass.
        num_workers: DataLoader workers for 2D inputs.
        top_k_slices: how many most anomalous slices of a volume the CSV lists.
        checkpoint: the checkpoint file the network came from; its SHA-256 identifies the algorithm in DICOM results.
        dicom_output: write DICOM SEG and Parametric Map results for DICOM series (needs the ``dicom`` extra).
    """

    def __init__(
        self,
        network: MultiAD,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        num_workers: int = 0,
        top_k_slices: int = 3,
        checkpoint: str | None = None,
        dicom_output: bool = True,
    ) -> None:
        if not network.is_calibrated:
            raise ValueError("the network is not calibrated: load a checkpoint written at the end of training")
        self.network = network.to(device).eval()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.top_k_slices = top_k_slices
        self.checkpoint_sha256 = checkpoint_sha256(checkpoint) if checkpoint else "unknown"
        self.dicom_output = dicom_output
        recipe = network.recipe
        if recipe.organ_labels:
            logger.warning(
                f"the model was trained on images masked to organ labels {list(recipe.organ_labels)}; inputs "
                "without label maps are scored unmasked"
            )
        self.image_chain = image_transform(recipe, resize=False)
        self.resize = resize_transform(recipe)
        self.volume_chain = volume_transform(recipe, labels=False)
        self.slicer = slicing_transform(recipe, labels=False)
        self.slice_chain = slice_transform(recipe)
        self.to_rgb = network_input()

    @torch.no_grad()
    def predict_samples(self, samples: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run preprocessed samples (outputs of the preprocessing chains) through the network.

        Returns:
            raw maps at the model's resolution ``(N, 1, S, S)`` and scores ``(N,)``, on the CPU.
        """
        images = torch.stack([self.to_rgb(s)["image"].as_tensor() for s in samples])
        height, width = self.network.recipe.image_size
        # the size, layout and range the model was trained for, as the exported model checks them
        check_images(images, height, width, refuse_range=False)
        result = self.network(images.to(self.device))
        return result.anomaly_map.float().cpu(), result.pred_score.float().cpu()

    @staticmethod
    def _restore(chain: Compose, image: MetaTensor, anomaly_map: torch.Tensor) -> torch.Tensor:
        """Map a model-resolution map back to the geometry ``image`` had before ``chain``."""
        tracked = MetaTensor(anomaly_map, meta=dict(image.meta), applied_operations=list(image.applied_operations))
        return chain.inverse({"image": tracked})["image"].as_tensor()

    def predict_images(self, paths: Sequence[str]) -> Iterator[tuple[str, np.ndarray, np.ndarray, float]]:
        """Yield ``(path, image (3, h, w) in [0, 1], raw map (H, W), score)`` per 2D file, in batches.

        The map has the file's size ``(H, W)``; the image is the one the network's input was made from, which
        is the file itself unless it exceeds twice the model's size (then it is reduced on reading, see
        :func:`multiad_monai.transforms.shrink`, and the map is interpolated back to the file's size).
        """
        dataset = NamedErrorDataset([{"image": p, "path": p} for p in paths], transform=self.image_chain)
        # samples keep their own metadata (for the inverse): batches stay lists
        loader = DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=list)
        for originals in loader:
            samples = [self.resize(sample) for sample in originals]
            maps, scores = self.predict_samples(samples)
            for original, sample, anomaly_map, score in zip(originals, samples, maps, scores):
                restored = self._restore(self.resize, sample["image"], anomaly_map)
                with Image.open(original["path"]) as file:  # the header alone: the file's own size
                    width, height = file.size
                if restored.shape[-2:] != (height, width):
                    restored = F.interpolate(restored[None], size=(height, width), mode="bilinear")[0]
                yield original["path"], self.to_rgb(original)["image"].numpy(), restored[0].numpy(), float(score)

    def predict_volume(self, path: Input) -> VolumePrediction:
        """Slice-wise prediction of one 3D volume (a file, a DICOM series folder or a :class:`DicomSeries`), mapped
        back to the input's geometry (a DICOM series: ITK's array order, columns, rows, slices in position order)."""
        volume = apply_named(self.volume_chain, {"image": path.files if isinstance(path, DicomSeries) else path})
        slices = apply_named(self.slicer, volume)  # also rejects anything but one-channel 3D volumes
        maps, scores = [], []
        for start in range(0, len(slices), self.batch_size):
            batch = [apply_named(self.slice_chain, s) for s in slices[start : start + self.batch_size]]
            batch_maps, batch_scores = self.predict_samples(batch)
            maps += [self._restore(self.slice_chain, s["image"], m)[0] for s, m in zip(batch, batch_maps)]
            scores += batch_scores.tolist()
        axis = self.network.recipe.slice_axis
        oriented = torch.stack(maps, axis)[None]
        worst = int(np.argmax(scores))
        worst_overlay = overlay(
            slices[worst]["image"][0].numpy(),
            self.network.normalize_map(maps[worst].float()).cpu().numpy(),
        )
        restored = self._restore(self.volume_chain, volume["image"], oriented)[0].numpy()
        if isinstance(path, str) and path.lower().endswith((".nii", ".nii.gz")):
            affine = nib.load(path).affine  # exactly the input's header affine
        else:
            affine = np.asarray(volume["image"].meta["original_affine"])
        return VolumePrediction(restored, affine, np.asarray(scores), worst_overlay)

    def __call__(self, input_path: str, output_dir: str) -> list[dict]:
        """Score every input under ``input_path`` and write maps, overlays and ``scores.csv`` to ``output_dir``."""
        inputs = list_inputs(input_path)
        check_output_dir(input_path, output_dir)
        with staged_dir(output_dir, merge=True) as staging:  # all files appear only once every input succeeded
            rows = self.write_results(inputs, output_names(inputs), staging)
            rows = [rows[item] for item in inputs]
            with open(os.path.join(staging, "scores.csv"), "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
        logger.info(f"scored {len(rows)} inputs; results in {output_dir}")
        return rows

    def write_results(self, inputs: Sequence[Input], names: dict[Input, str], out: str) -> dict[Input, dict]:
        """Score ``inputs`` and write each one's maps and overlay to the folder ``out`` under its name in ``names``.

        2D images go through the network in batches, volumes one at a time. Returns each input's ``scores.csv``
        row (see ``CSV_COLUMNS``); nothing is written to ``scores.csv`` itself.
        """
        return {**self._write_images(list(inputs), names, out), **self._write_volumes(list(inputs), names, out)}

    def _row(self, item: Input, score: float, top_slices: str = "", name: str = "") -> dict:
        normalized = float(self.network.normalize_score(torch.tensor(score)))
        series = isinstance(item, DicomSeries)
        return {
            "image": input_source(item),
            "score": f"{score:.6f}",
            "normalized_score": f"{normalized:.4f}",
            "is_anomalous": int(normalized > 0.5),
            "top_slices": top_slices,
            "series": name if series else "",
            "series_uid": item.uid if series else "",
        }

    def _write_images(self, inputs: list[Input], names: dict[Input, str], out: str) -> dict[Input, dict]:
        images = [p for p in inputs if not is_volume(p)]
        rows = {}
        for path, image, anomaly_map, score in self.predict_images(images) if images else []:
            stem = names[path]
            # float16: a heat map needs no more, and a full-size map of a large file stays half as large
            np.save(os.path.join(out, f"{stem}_map.npy"), anomaly_map.astype(np.float16))
            shown = torch.from_numpy(anomaly_map)[None, None]
            if tuple(shown.shape[-2:]) != image.shape[1:]:  # a reduced large file: the overlay at that size
                shown = F.interpolate(shown, size=image.shape[1:], mode="area")
            normalized = self.network.normalize_map(shown[0, 0].float()).cpu().numpy()
            Image.fromarray(overlay(image, normalized)).save(os.path.join(out, f"{stem}_overlay.png"))
            rows[path] = self._row(path, score)
        return rows

    def _write_volumes(self, inputs: list[Input], names: dict[Input, str], out: str) -> dict[Input, dict]:
        rows = {}
        for path in (p for p in inputs if is_volume(p)):
            prediction = self.predict_volume(path)
            stem = names[path]
            if isinstance(path, DicomSeries) and self.dicom_output:
                self._write_dicom(path, prediction, os.path.join(out, stem))
            nifti = nib.Nifti1Image(prediction.anomaly_map.astype(np.float32), prediction.affine)
            nib.save(nifti, os.path.join(out, f"{stem}_map.nii.gz"))
            Image.fromarray(prediction.worst_slice_overlay).save(os.path.join(out, f"{stem}_overlay.png"))
            slice_rows = [self._row(str(i), float(score)) for i, score in enumerate(prediction.slice_scores)]
            with open(os.path.join(out, f"{stem}_slices.csv"), "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=["slice", "score", "normalized_score", "is_anomalous"])
                writer.writeheader()
                writer.writerows(
                    {"slice": r["image"], **{k: r[k] for k in ("score", "normalized_score", "is_anomalous")}}
                    for r in slice_rows
                )
            top = ";".join(str(int(i)) for i in np.argsort(-prediction.slice_scores)[: self.top_k_slices])
            rows[path] = self._row(path, float(prediction.slice_scores.max()), top, stem)
        return rows

    def _write_dicom(self, series: DicomSeries, prediction: VolumePrediction, prefix: str) -> None:
        """The label at the calibrated threshold as ``<prefix>_seg.dcm``, the heat map as ``<prefix>_heatmap.dcm``."""
        raw = torch.from_numpy(prediction.anomaly_map.astype(np.float32))
        normalized = self.network.normalize_map(raw).cpu().numpy()
        write_segmentation(series, normalized > 0.5, f"{prefix}_seg.dcm", 0.5, self.checkpoint_sha256)
        write_heatmap(series, normalized, f"{prefix}_heatmap.dcm", self.checkpoint_sha256)


def load_inferer(ckpt_path: str, device: str | torch.device = "cpu", batch_size: int = 16) -> AnomalyInferer:
    """The one place a trained model is loaded for use (MLflow pyfunc, MONAI Label app): network, calibration and
    preprocessing recipe from the checkpoint.

    Args:
        ckpt_path: the calibrated checkpoint written at the end of training (it carries its recipe).
        device: where to run.
        batch_size: images per forward pass.

    Raises:
        FileNotFoundError: no file at ``ckpt_path``.
        ValueError: the file is corrupt, not calibrated, or written before checkpoints carried their recipe.
    """
    network = load_model(ckpt_path, device=device)
    return AnomalyInferer(network, device=device, batch_size=batch_size, checkpoint=ckpt_path)
