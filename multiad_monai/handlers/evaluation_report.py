"""A per-image report of an evaluation: scores CSV, ROC and PRO curves, and the worst-scored images."""

from __future__ import annotations

import csv
import heapq
import itertools
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.handlers import MLFlowHandler
from sklearn.metrics import roc_curve

from multiad_monai.metrics.functional import aupro_of_curve, image_auroc, pro_curve_until
from multiad_monai.metrics.maps import EvaluationMaps
from multiad_monai.networks.multiad import MultiAD
from multiad_monai.upstream import mlflow_run_and_client
from multiad_monai.utils import MultiADKeys, atomic_write
from multiad_monai.visualize import new_figure, overlay, save_png

__all__ = ["EvaluationReport"]

CSV_NAME, ROC_NAME, PRO_NAME, WORST_NAME = "per_image.csv", "roc_curve.png", "pro_curve.png", "worst_cases.png"
# the worst-case thumbnails are downsampled to at most this many pixels per side
_THUMBNAIL_SIDE = 128
# curves are thinned to this many points before plotting (millions of pixel thresholds otherwise)
_MAX_CURVE_POINTS = 5000


class _Candidate(NamedTuple):
    """One image kept for the worst-case grid (CPU, downsampled)."""

    name: str
    slice_index: Any
    score: float
    image: torch.Tensor  # (3, h, w) in [0, 1]
    anomaly_map: torch.Tensor  # (h, w) raw
    mask: np.ndarray | None  # (h, w) bool


def _per_sample(value: Any, n: int) -> list | None:
    """A batched metadata value as a list of ``n`` plain values, or None when it is not one per sample."""
    if isinstance(value, torch.Tensor | np.ndarray):
        value = value.tolist()
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != n:
        return None
    return [v.item() if isinstance(v, torch.Tensor | np.generic) else v for v in value]


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(x) <= _MAX_CURVE_POINTS:
        return x, y
    keep = np.unique(np.linspace(0, len(x) - 1, _MAX_CURVE_POINTS).round().astype(int))
    return x[keep], y[keep]


class EvaluationReport:
    """Writes a per-image report of a whole test split to ``output_dir`` at ``COMPLETED``.

    Files (each written atomically; logged under ``evaluation/`` to the MLflow run when one is active):

    - ``per_image.csv``: ``image`` (source file from the batch's ``image`` MetaTensor ``filename_or_obj``,
      else the running sample index), ``label``, ``score`` (raw), ``normalized_score`` and ``is_anomalous``
      (normalised score > 0.5; both empty when the model is not calibrated), plus ``slice_index`` when
      the metadata has it (slices of 3D volumes).
    - ``roc_curve.png``: image-level ROC with the AUROC (skipped when the split has one class only).
    - ``pro_curve.png``: PRO against FPR up to ``fpr_limit`` with the AUPRO (skipped without anomalous pixels).
    - ``worst_cases.png``: overlays of the ``num_worst`` highest-scoring normal images (false positives,
      top row) and the ``num_worst`` lowest-scoring anomalous images (false negatives, bottom row).

    Memory: scores are small numpy arrays and only the running worst-case candidates keep an image
    (downsampled, on CPU). The PRO curve needs every map and mask of the split: they are the
    :class:`~multiad_monai.metrics.EvaluationMaps` the pixel metrics hold (pass the same ``maps`` to them and
    to the report: one copy of the maps, one PRO curve). Under DistributedDataParallel run the report in a
    single-process evaluation.

    Args:
        output_dir: folder of the report files.
        network: the evaluated model, for its calibration (normalised scores, map colour scale).
        num_worst: false positives and false negatives shown each.
        mlflow_handler: when given and its run is active, the files are logged to that run as artifacts.
        fpr_limit: upper FPR of the PRO curve and of its AUPRO.
        maps: the evaluation's maps, shared with the pixel metrics; None: the report collects its own.
    """

    def __init__(
        self,
        output_dir: str,
        network: MultiAD,
        num_worst: int = 4,
        mlflow_handler: MLFlowHandler | None = None,
        fpr_limit: float = 0.3,
        maps: EvaluationMaps | None = None,
    ) -> None:
        if num_worst < 0:
            raise ValueError(f"num_worst must be >= 0, got {num_worst}")
        if not 0 < fpr_limit <= 1:
            raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
        self.output_dir = output_dir
        self.network = network
        self.num_worst = num_worst
        self.mlflow_handler = mlflow_handler
        self.fpr_limit = fpr_limit
        self.maps = EvaluationMaps() if maps is None else maps
        self.logger = logging.getLogger(__name__)
        self.reset()

    def attach(self, engine: Engine) -> None:
        self.maps.attach(engine)
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self)

    def reset(self, engine: Engine | None = None) -> None:
        """Forget the previous run (``Events.STARTED``)."""
        self.names: list[str] = []
        self.slice_indices: list[Any] = []
        self.labels: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []
        # min-heaps of (key, tie-breaker, candidate): key = score for normals, -score for anomalous images
        self._false_positives: list[tuple[float, int, _Candidate]] = []
        self._false_negatives: list[tuple[float, int, _Candidate]] = []
        self._order = itertools.count()
        self.worst_false_positives: list[str] = []
        self.worst_false_negatives: list[str] = []

    def collect(self, engine: Engine) -> None:
        """Keep the scores, names and worst-case candidates of one batch (``Events.ITERATION_COMPLETED``).

        Reads ``engine.state.output``: ``image`` ``(N, 3, H, W)``, ``label`` ``(N,)``, ``anomaly_map``
        ``(N, 1, H, W)``, ``pred_score`` ``(N,)`` and optionally ``mask`` ``(N, 1, H, W)``; and the metadata
        of ``engine.state.batch["image"]``.
        """
        output = engine.state.output
        scores = output[MultiADKeys.PRED_SCORE].detach().float().view(-1).cpu().numpy()
        labels = output["label"].detach().view(-1).cpu().numpy().astype(np.int64)
        n = len(scores)
        names, slices = self._batch_metadata(engine.state.batch, n)
        self.names += names
        self.slice_indices += slices
        self.scores.append(scores)
        self.labels.append(labels)

        anomaly_maps = output[MultiADKeys.ANOMALY_MAP].detach()
        masks = output.get(MultiADKeys.MASK)
        for i, (name, slice_index, score, label) in enumerate(zip(names, slices, scores.tolist(), labels.tolist())):
            heap, key = (self._false_negatives, -score) if label > 0 else (self._false_positives, score)
            if self.num_worst == 0 or (len(heap) == self.num_worst and key <= heap[0][0]):
                continue
            mask = None if masks is None else masks[i : i + 1]
            thumbnail = self._thumbnail(name, slice_index, score, output["image"][i], anomaly_maps[i], mask)
            entry = (key, next(self._order), thumbnail)
            if len(heap) < self.num_worst:
                heapq.heappush(heap, entry)
            else:
                heapq.heapreplace(heap, entry)

    def __call__(self, engine: Engine) -> None:
        """Write the report files and log them to MLflow (``Events.COMPLETED``)."""
        os.makedirs(self.output_dir, exist_ok=True)
        scores = np.concatenate(self.scores) if self.scores else np.zeros(0, dtype=np.float32)
        labels = np.concatenate(self.labels) if self.labels else np.zeros(0, dtype=np.int64)
        self.worst_false_positives = [c.name for c in self._ranked(self._false_positives)]
        self.worst_false_negatives = [c.name for c in self._ranked(self._false_negatives)]
        written = [self._write_csv(scores, labels)]
        written += [p for p in (self._write_roc(scores, labels), self._write_pro(), self._write_worst_cases()) if p]
        mlflow = mlflow_run_and_client(self.mlflow_handler)
        if mlflow is not None:
            run, client = mlflow
            for path in written:
                client.log_artifact(run.info.run_id, path, artifact_path="evaluation")
        self.logger.info(f"evaluation report of {len(scores)} images written to {self.output_dir}")

    def _batch_metadata(self, batch: Any, n: int) -> tuple[list[str], list[Any]]:
        """Source file names and slice indices of a batch, falling back to the running sample index."""
        image = batch.get("image") if isinstance(batch, Mapping) else None
        meta = image.meta if isinstance(image, MetaTensor) else {}
        names = _per_sample(meta.get("filename_or_obj"), n)
        start = len(self.names)
        names = [str(name) for name in names] if names else [str(start + i) for i in range(n)]
        slices = _per_sample(meta.get("slice_index"), n) or [None] * n
        return names, slices

    @staticmethod
    def _thumbnail(
        name: str,
        slice_index: Any,
        score: float,
        image: torch.Tensor,
        anomaly_map: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> _Candidate:
        """Downsample one sample (``(3, H, W)``, ``(1, H, W)``, ``(1, 1, H, W)``) to a CPU candidate."""
        image, anomaly_map = image.detach().float()[None], anomaly_map.detach().float()[None]
        scale = _THUMBNAIL_SIDE / max(image.shape[-2:])
        if scale < 1:
            size = [max(1, round(s * scale)) for s in image.shape[-2:]]
            image = F.interpolate(image, size=size, mode="area")
            anomaly_map = F.interpolate(anomaly_map, size=size, mode="area")
            mask = None if mask is None else F.interpolate(mask.detach().float(), size=size, mode="nearest")
        mask_np = None if mask is None else mask.detach()[0, 0].bool().cpu().numpy()
        return _Candidate(name, slice_index, score, image[0].clamp(0, 1).cpu(), anomaly_map[0, 0].cpu(), mask_np)

    @staticmethod
    def _ranked(heap: list[tuple[float, int, _Candidate]]) -> list[_Candidate]:
        """The candidates of a heap, worst (largest key) first."""
        return [entry[2] for entry in sorted(heap, key=lambda e: (-e[0], e[1]))]

    def _normalized_scores(self, scores: np.ndarray) -> np.ndarray | None:
        if not self.network.is_calibrated:
            return None
        return self.network.normalize_score(torch.as_tensor(scores)).cpu().numpy()

    def _write_csv(self, scores: np.ndarray, labels: np.ndarray) -> str:
        path = os.path.join(self.output_dir, CSV_NAME)
        normalized = self._normalized_scores(scores)
        with_slices = any(s is not None for s in self.slice_indices)
        header = ["image", "label", "score", "normalized_score", "is_anomalous"]
        header += ["slice_index"] if with_slices else []

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(header)
                for i, (name, label, score) in enumerate(zip(self.names, labels.tolist(), scores.tolist())):
                    row = [name, label, score]
                    row += ["", ""] if normalized is None else [float(normalized[i]), int(normalized[i] > 0.5)]
                    row += [self.slice_indices[i] if self.slice_indices[i] is not None else ""] if with_slices else []
                    writer.writerow(row)

        atomic_write(path, write)
        return path

    def _write_roc(self, scores: np.ndarray, labels: np.ndarray) -> str | None:
        if len(np.unique(labels > 0)) < 2:
            self.logger.warning("no ROC curve: the test split has a single class")
            return None
        fpr, tpr, _ = roc_curve(labels > 0, scores)
        figure = new_figure(figsize=(4.5, 4.5))
        ax = figure.add_subplot()
        ax.plot(fpr, tpr, label=f"AUROC = {image_auroc(scores, labels):.3f}")
        ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="image-level ROC")
        ax.set(xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="lower right")
        return save_png(figure, os.path.join(self.output_dir, ROC_NAME))

    def _write_pro(self) -> str | None:
        if not self.maps.has_masks:
            return None
        masks = self.maps.gathered()[1]
        if not masks.any() or masks.all():
            self.logger.info("no PRO curve: the test split has no anomalous pixels (or no normal ones)")
            return None
        fpr, pro = self.maps.pro_curve(self.maps.map_size)  # computed once, with the AUPRO metric
        aupro = aupro_of_curve(fpr, pro, self.fpr_limit)
        x, y = _thin(*pro_curve_until(fpr, pro, self.fpr_limit))
        figure = new_figure(figsize=(4.5, 4.5))
        ax = figure.add_subplot()
        ax.plot(x, y, label=f"AUPRO@{self.fpr_limit:g} = {aupro:.3f}")
        ax.set(xlabel="false positive rate (pixels)", ylabel="per-region overlap", title="PRO curve")
        ax.set(xlim=(0, self.fpr_limit), ylim=(0, 1.01))
        ax.legend(loc="lower right")
        return save_png(figure, os.path.join(self.output_dir, PRO_NAME))

    def _write_worst_cases(self) -> str | None:
        rows = [
            ("FP", self._ranked(self._false_positives)),
            ("FN", self._ranked(self._false_negatives)),
        ]
        candidates = [c for _, row in rows for c in row]
        if not candidates:
            return None
        maps = self._display_maps([c.anomaly_map for c in candidates])
        columns = max(len(row) for _, row in rows)
        figure = new_figure(figsize=(2.2 * columns, 4.8))
        axes = figure.subplots(2, columns, squeeze=False)
        index = 0
        for r, (kind, row) in enumerate(rows):
            for c in range(columns):
                ax = axes[r, c]
                ax.axis("off")
                if c >= len(row):
                    continue
                candidate = row[c]
                ax.imshow(overlay(candidate.image.numpy(), maps[index], candidate.mask))
                title = os.path.basename(candidate.name)
                title += "" if candidate.slice_index is None else f" [slice {candidate.slice_index}]"
                ax.set_title(f"{kind} {title}\nscore {candidate.score:.4g}", fontsize=7)
                index += 1
        figure.suptitle("highest-scoring normal (top) / lowest-scoring anomalous (bottom)", fontsize=8)
        return save_png(figure, os.path.join(self.output_dir, WORST_NAME))

    def _display_maps(self, maps: list[torch.Tensor]) -> list[np.ndarray]:
        """``(h, w)`` raw maps in ``[0, 1]``: the model's calibration (0.5 = threshold), else a joint min-max."""
        if self.network.is_calibrated:
            return [self.network.normalize_map(m).cpu().numpy() for m in maps]
        low = min(float(m.min()) for m in maps)
        high = max(float(m.max()) for m in maps)
        return [((m - low) / max(high - low, 1e-8)).numpy() for m in maps]
