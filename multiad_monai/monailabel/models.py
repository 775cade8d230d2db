"""The bundles an app serves: where each one's current checkpoint is, and the inferer built from it.

A served model is a bundle folder (``bundles/<name>``) plus its checkpoint: the newest finished retrain
run of the app (``<runs_dir>/<name>/<run>/run.json``) when there is one, else the base checkpoint the server
was started with. The inferer is rebuilt whenever that file changes, so a retrained model is used by the
next request without a restart.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass

import torch

from multiad_monai.checkpoint import checkpoint_sha256
from multiad_monai.inference import AnomalyInferer, load_inferer

__all__ = ["BundleModel", "Checkpoint", "load_inferer", "RUN_FILE"]

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"  # written by a retrain run once its checkpoint is complete


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file and its content hash: scores stored with one ``key`` are redone when it changes."""

    path: str
    key: str  # first 16 hex digits of the file's SHA-256
    mtime: float

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "sha256": self.key}


class BundleModel:
    """One served bundle: its folder, base checkpoint, retrain runs and a cached inferer.

    Args:
        name: the model name in the app's URLs (``/infer/<name>``), also the bundle folder's name.
        bundle_dir: ``bundles/<name>``, whose ``train.json`` retrains the model (inference needs only the
            checkpoint).
        base_ckpt: checkpoint used until a retrain run finishes.
        runs_dir: where this model's retrain runs are written, one sub-folder each.
        device: ``"cpu"``, ``"cuda"``, ...
        batch_size: slices per forward pass.
    """

    def __init__(
        self, name: str, bundle_dir: str, base_ckpt: str, runs_dir: str, device: str, batch_size: int = 16
    ) -> None:
        if not os.path.isfile(os.path.join(bundle_dir, "train.json")):
            raise ValueError(f"model {name!r}: {bundle_dir} has no train.json (is it a multiad-monai bundle?)")
        self.name = name
        self.bundle_dir = bundle_dir
        self.base_ckpt = base_ckpt
        self.runs_dir = runs_dir
        self.device = device
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._cached: tuple[Checkpoint, AnomalyInferer] | None = None
        self._keys: dict[tuple[str, float, int], str] = {}

    def checkpoint_path(self) -> str:
        """The newest finished retrain run's checkpoint, else the base checkpoint."""
        runs = sorted(os.listdir(self.runs_dir)) if os.path.isdir(self.runs_dir) else []
        for run in reversed(runs):
            record = os.path.join(self.runs_dir, run, RUN_FILE)
            if os.path.isfile(record):
                with open(record, encoding="utf-8") as f:
                    path = json.load(f)["ckpt_path"]
                if os.path.isfile(path):
                    return path
        return self.base_ckpt

    def checkpoint(self) -> Checkpoint:
        """The current checkpoint; raises ``FileNotFoundError`` (naming the fixes) when there is none."""
        path = self.checkpoint_path()
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"model {self.name!r} has no checkpoint at {path}: train the bundle first (python -m monai.bundle run "
                f"training --config_file {self.bundle_dir}/train.json ...), pass --conf {self.name}_ckpt_path PATH, "
                f"or POST /train/{self.name} once studies are marked normal"
            )
        stat = os.stat(path)
        signature = (path, stat.st_mtime, stat.st_size)
        if signature not in self._keys:
            self._keys[signature] = checkpoint_sha256(path)[:16]
        return Checkpoint(path, self._keys[signature], stat.st_mtime)

    def inferer(self) -> tuple[AnomalyInferer, Checkpoint]:
        """The inferer of the current checkpoint, rebuilt only when the checkpoint changed (thread-safe)."""
        with self._lock:
            checkpoint = self.checkpoint()
            if self._cached is None or self._cached[0] != checkpoint:
                logger.info(f"model {self.name!r}: loading {checkpoint.path} (sha256 {checkpoint.key})")
                self._cached = (checkpoint, load_inferer(checkpoint.path, self.device, self.batch_size))
            return self._cached[1], self._cached[0]

    def info(self) -> dict:
        try:
            return self.checkpoint().as_dict()
        except FileNotFoundError as e:
            return {"path": None, "error": str(e)}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
