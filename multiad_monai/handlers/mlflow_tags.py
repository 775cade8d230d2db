"""Make MLflow runs comparable across bundles, datasets and machines.

Every training and evaluation run gets tags naming the code, the data and the machine (:func:`run_tags`),
throughput and peak-memory metrics under the same names in every bundle, and a training run gets its
model logged as an MLflow ``pyfunc`` model (optionally registered), see :mod:`multiad_monai.mlflow_model`.
"""

from __future__ import annotations

import logging
import os
import platform
import resource
import subprocess
import time
from collections.abc import Mapping
from typing import Any

import monai
import torch
from ignite.engine import Engine, Events
from mlflow.entities import Metric, RunTag
from monai.engines import Trainer
from monai.handlers import MLFlowHandler
from monai.utils import CommonKeys as Keys

import multiad_monai
from multiad_monai.data.layouts import DatasetIndex, dataset_fingerprint

__all__ = ["RunTracker", "run_tags", "dataset_fingerprint", "git_commit", "DOMAINS", "RUN_METRICS"]

logger = logging.getLogger(__name__)

DOMAINS = {"brain": "medical", "liver": "medical", "oct": "medical", "mvtec": "industrial"}
"""Default ``domain`` tag of each bundle; a run on other data sets its own (``--run_tags "{'domain': 'medical'}"``)."""

RUN_METRICS = (
    "train_seconds",
    "train_images_per_second",
    "eval_images_per_second",
    "peak_memory_mb",
    "peak_gpu_memory_mb",
)
"""Metrics logged by :class:`RunTracker`, besides the evaluator's own (``image_auroc``, ...)."""


def git_commit(path: str | None = None) -> tuple[str, bool] | None:
    """``(commit, has uncommitted changes)`` of the git work tree holding ``path`` (the package), or None."""
    path = path or os.path.dirname(os.path.dirname(os.path.abspath(multiad_monai.__file__)))

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", "-C", path, *args],
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=10,
            check=True,
        )
        return result.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return commit, dirty


def run_tags(
    bundle: str,
    dataset_dir: str | DatasetIndex | None,
    category: str | None = None,
    device: str | torch.device = "cpu",
    domain: str | None = None,
) -> dict[str, str]:
    """The tags that make a run comparable with runs of other bundles, data copies and machines.

    Args:
        bundle: the bundle folder or name (``bundles/brain`` -> ``brain``).
        dataset_dir: the dataset root (the category folder is added when ``category`` is given), or the run's
            :class:`~multiad_monai.data.DatasetIndex` (its fingerprint is computed once and ``category`` is its own).
        category: MVTec-style category inside ``dataset_dir``.
        device: where the run computes.
        domain: ``medical`` / ``industrial``; defaults to the bundle's (:data:`DOMAINS`).
    """
    name = os.path.basename(os.path.normpath(str(bundle)))
    tags = {
        "bundle": name,
        "domain": domain or DOMAINS.get(name, "unknown"),
        "multiad_monai_version": multiad_monai.__version__,
        "torch_version": torch.__version__,
        "monai_version": monai.__version__,
        "python_version": platform.python_version(),
        "device": str(device),
        "device_name": _device_name(torch.device(device)),
        "hostname": platform.node(),
    }
    if isinstance(dataset_dir, DatasetIndex):
        index = dataset_dir
        dataset_dir, category = index.dataset_dir, index.category
        fingerprint, n_files = index.fingerprint
    elif dataset_dir:
        root = os.path.join(dataset_dir, category) if category else dataset_dir
        fingerprint, n_files = dataset_fingerprint(root)
    if dataset_dir:
        dataset = os.path.basename(os.path.normpath(dataset_dir))
        tags.update(
            dataset=f"{dataset}/{category}" if category else dataset,
            dataset_fingerprint=fingerprint,
            dataset_files=str(n_files),
        )
    commit = git_commit()
    if commit is not None:
        tags.update(
            {"git_commit": commit[0], "git_dirty": str(commit[1]).lower(), "mlflow.source.git.commit": commit[0]}
        )
    return tags


def _device_name(device: torch.device) -> str:
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cpus, {torch.get_num_threads()} threads)"


def _reset_peak_memory(device: torch.device) -> None:
    try:  # Linux: writing 5 resets the process's peak resident set size (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # the peak then covers the whole process
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_mb() -> float:
    """Peak resident memory of this process in MB (since the last reset where the OS allows one)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


class _Throughput:
    """Images per second of an engine's iterations (data loading included, epoch-end handlers excluded)."""

    def __init__(self) -> None:
        self.images, self.seconds, self._epoch_start, self._last = 0, 0.0, 0.0, 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def epoch_started(self, engine: Engine) -> None:
        self._epoch_start = self._last = time.perf_counter()

    def iteration_completed(self, engine: Engine) -> None:
        output = engine.state.output
        images = output.get(Keys.IMAGE) if isinstance(output, Mapping) else None
        self.images += len(images) if images is not None else 0
        self._last = time.perf_counter()

    def epoch_completed(self, engine: Engine) -> None:
        self.seconds += self._last - self._epoch_start

    @property
    def per_second(self) -> float | None:
        return self.images / self.seconds if self.images and self.seconds > 0 else None


class RunTracker:
    """Tags, throughput, peak memory and the logged model of the MLflow run of a bundle.

    Attach it to the trainer (training workflow) and to the evaluator: it times the trainer and takes the
    run from ``mlflow_handler`` when the evaluator starts (MONAI's handler continues the training run there).
    Images per second and peak memory are this process's (rank 0's in a multi-GPU run).

    - evaluator ``STARTED``: tags from :func:`run_tags`, ``run_type`` (``training`` when attached to a trainer,
      else ``evaluation``) and ``tags``;
    - evaluator ``COMPLETED``: metrics :data:`RUN_METRICS`; for a training run, the checkpoint as the run's
      ``model`` pyfunc (:func:`multiad_monai.mlflow_model.log_pyfunc_model`), registered as ``register_model``.
      It runs after the ``mlflow_handler`` closed the run, which stays FINISHED.

    Args:
        mlflow_handler: the evaluator's ``MLFlowHandler`` (``@validate_mlflow``); None disables the tracker
            (e.g. on the non-zero ranks of a multi-GPU run).
        bundle: bundle folder or name, see :func:`run_tags`.
        dataset_dir: see :func:`run_tags`.
        category: see :func:`run_tags`.
        device: see :func:`run_tags`.
        domain: see :func:`run_tags`.
        tags: extra tags, e.g. ``{"config": "no_adversarial"}``.
        run_state: the training's :class:`~multiad_monai.handlers.TrainingRunState`, whose clock counts every
            resume, for ``train_seconds`` (default: this process's training time).
        ckpt_path: the calibrated checkpoint written at the end of training (recipe inside), logged as the model.
        log_model: log the model of a training run.
        register_model: Model Registry name to register it under, or None.
    """

    def __init__(
        self,
        mlflow_handler: MLFlowHandler | None,
        bundle: str,
        dataset_dir: str | DatasetIndex | None = None,
        category: str | None = None,
        device: str | torch.device = "cpu",
        domain: str | None = None,
        tags: Mapping[str, Any] | None = None,
        run_state: Any | None = None,
        ckpt_path: str | None = None,
        log_model: bool = True,
        register_model: str | None = None,
    ) -> None:
        if register_model and not log_model:
            raise ValueError(f"register_model={register_model!r} needs log_model=True (the model must be logged)")
        if register_model and not ckpt_path:
            raise ValueError("register_model needs ckpt_path, the calibrated checkpoint written at the end of training")
        self.mlflow_handler = mlflow_handler
        self.bundle = bundle
        self.dataset_dir = dataset_dir
        self.category = category
        self.device = torch.device(device)
        self.domain = domain
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.run_state = run_state
        self.ckpt_path = ckpt_path
        self.log_model = log_model
        self.register_model = register_model or None
        self.trainer: Trainer | None = None
        self.train_throughput = _Throughput()
        self.eval_throughput = _Throughput()
        self.run_id: str | None = None
        self._memory_reset = False

    def attach(self, engine: Engine) -> None:
        """Attach to the trainer (timing only) or to the evaluator (timing, tags, metrics, model)."""
        if self.mlflow_handler is None:
            return
        engine.add_event_handler(Events.STARTED, self.reset_memory)
        if isinstance(engine, Trainer):
            self.trainer = engine
            self.train_throughput.attach(engine)
            return
        self.eval_throughput.attach(engine)
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.COMPLETED, self)

    def reset_memory(self, engine: Engine) -> None:
        """Start the peak-memory window at the first engine start of the run."""
        if not self._memory_reset:
            _reset_peak_memory(self.device)
            self._memory_reset = True

    def started(self, engine: Engine) -> None:
        """Tag the run the ``mlflow_handler`` has just started or continued."""
        run = self.mlflow_handler.cur_run
        if run is None:
            raise RuntimeError("RunTracker must be attached after the MLFlowHandler it reads the run from")
        self.run_id = run.info.run_id
        tags = run_tags(self.bundle, self.dataset_dir, self.category, self.device, self.domain)
        tags["run_type"] = "training" if self.trainer is not None else "evaluation"
        tags.update(self.tags)
        self.mlflow_handler.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def metrics(self) -> dict[str, float]:
        """Train time, images per second and peak memory of the run so far."""
        values = {
            "train_images_per_second": self.train_throughput.per_second,
            "eval_images_per_second": self.eval_throughput.per_second,
            "peak_memory_mb": _peak_memory_mb(),
        }
        if self.trainer is not None:
            seconds = (
                self.run_state.elapsed if self.run_state is not None else self.trainer.state.times.get("COMPLETED")
            )
            values["train_seconds"] = seconds
        if self.device.type == "cuda" and torch.cuda.is_available():
            values["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return {k: float(v) for k, v in values.items() if v is not None}

    def __call__(self, engine: Engine) -> None:
        """Log the run's metrics and, for a training run, its model (``Events.COMPLETED`` of the evaluator)."""
        if self.run_id is None:
            return
        client = self.mlflow_handler.client
        step = int(self.trainer.state.epoch) if self.trainer is not None else 0
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in self.metrics().items()]
        client.log_batch(self.run_id, metrics=metrics)
        if self.trainer is None or not self.log_model or not self.ckpt_path:
            return
        from multiad_monai.mlflow_model import log_pyfunc_model  # imports mlflow.pyfunc: only when used

        final = {k: float(v) for k, v in engine.state.metrics.items() if float(v) == float(v)}  # not NaN
        info = log_pyfunc_model(
            client.tracking_uri, self.run_id, self.ckpt_path, registered_model_name=self.register_model, metrics=final
        )
        registered = f", registered as {self.register_model!r} version {info.registered_model_version}"
        logger.info(f"model logged as runs:/{self.run_id}/model" + (registered if self.register_model else ""))
