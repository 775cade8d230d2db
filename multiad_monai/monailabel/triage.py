"""Triage: store each study's anomaly score in the datastore, hand out the most anomalous unreviewed study first.

Scores live in the image info under ``"multiad"``, one entry per served model::

    {"multiad": {"brain": {"score": 0.41, "normalized_score": 0.93, "is_anomalous": true,
                           "top_slices": [31, 30, 32], "checkpoint": "<sha256[:16]>", "ts": 1764400000}}}

A study already scored with the same checkpoint (same content hash) is skipped; a retrained checkpoint
rescores every study. A study that cannot be read gets ``{"error": ...}`` instead, and is retried with the
next checkpoint.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy

from multiad_monai.monailabel.infer import AnomalyInferTask, InputError
from multiad_monai.monailabel.studies import NORMAL_FLAG

__all__ = ["AnomalyScoring", "MostAnomalous", "INFO_KEY"]

logger = logging.getLogger(__name__)

INFO_KEY = "multiad"


class AnomalyScoring(ScoringMethod):
    """Score every study of the datastore with every served model (skipping those already scored).

    Args:
        tasks: the app's infer tasks by model name; scoring runs them and keeps the JSON.
    """

    def __init__(self, tasks: dict[str, AnomalyInferTask]) -> None:
        super().__init__("Anomaly score of every study with every model (skips studies scored by the same checkpoint)")
        self.tasks = tasks

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        summary = {}
        for name, task in self.tasks.items():
            try:
                key = task.model.checkpoint().key
            except FileNotFoundError as e:
                logger.warning(str(e))
                summary[name] = {"error": str(e)}
                continue
            counts = {"scored": 0, "skipped": 0, "failed": 0}
            for image_id in datastore.list_images():
                if datastore.get_image_info(image_id).get(INFO_KEY, {}).get(name, {}).get("checkpoint") == key:
                    counts["skipped"] += 1
                    continue
                entry = self._score(task, datastore.get_image_uri(image_id))
                counts["failed" if "error" in entry else "scored"] += 1
                entry.update(checkpoint=key, ts=int(time.time()))
                datastore.refresh()  # take in what the server wrote meanwhile (flags, labels) before writing
                stored = datastore.get_image_info(image_id).get(INFO_KEY, {})
                datastore.update_image_info(image_id, {INFO_KEY: {**stored, name: entry}})
            logger.info(f"scoring with {name} ({key}): {counts}")
            summary[name] = {**counts, "checkpoint": key}
        return summary

    @staticmethod
    def _score(task: AnomalyInferTask, path: str) -> dict[str, Any]:
        try:
            result_file, result = task({"image": path})
        except (InputError, ValueError) as e:
            logger.warning(f"cannot score {path}: {e}")
            return {"error": str(e)}
        os.remove(result_file)
        return {
            "score": result["score"],
            "normalized_score": result["normalized_score"],
            "is_anomalous": result["is_anomalous"],
            "top_slices": [s["slice"] for s in result["top_slices"]],
        }


class MostAnomalous(Strategy):
    """Next study: the unreviewed one with the highest normalised anomaly score.

    Unreviewed = no ``final`` label and no ``"normal"`` flag. Studies not scored yet come after scored ones.
    The request may name the ``model`` whose scores rank (default: the first served model).

    Args:
        models: names of the served models, the first being the default.
    """

    def __init__(self, models: list[str]) -> None:
        super().__init__("Unreviewed study with the highest anomaly score first")
        self.models = models

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        model = request.get("model") or self.models[0]
        if model not in self.models:
            raise ValueError(f"unknown model {model!r} for most_anomalous; served models: {self.models}")
        ranked = []
        for image_id in datastore.get_unlabeled_images():
            info = datastore.get_image_info(image_id)
            if info.get(NORMAL_FLAG) is not None:
                continue
            entry = info.get(INFO_KEY, {}).get(model, {})
            scored = "normalized_score" in entry
            ranked.append(((scored, entry.get("normalized_score", 0.0), entry.get("score", 0.0)), image_id, entry))
        if not ranked:
            return None
        _, image_id, entry = max(ranked, key=lambda r: r[0])
        return {
            "id": image_id,
            "model": model,
            "normalized_score": entry.get("normalized_score"),
            "candidates": len(ranked),
        }
