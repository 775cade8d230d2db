"""MONAI Label train task: retrain a served bundle on the studies marked normal, through its own ``train.json``.

The bundle runs as the README's command, ``python -m monai.bundle run training --config_file
bundles/<name>/train.json ...``, from the folder holding ``bundles/`` (the bundles refer to ``bundles/common``
relative to it), with the request's values in an ``--args_file``. Each request gets its own run folder
``<runs_dir>/<YYYYmmdd-HHMMSS>-<id>/`` (dataset links, checkpoints, ``metrics.json``, overlays, the final
``model.pt``) and its own MLflow run in ``<runs_dir>/mlruns.db``. The ``run.json`` record is written last, once
the checkpoint is complete: from then on the app serves that checkpoint (see
:class:`multiad_monai.monailabel.models.BundleModel`). A failed run leaves no folder behind.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

from monai.bundle import ConfigParser
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from multiad_monai.monailabel.models import RUN_FILE, BundleModel
from multiad_monai.monailabel.runs import (
    INTERRUPTED_FILE,
    TrainingLock,
    die_with_parent,
    interrupted,
    mark_interrupted,
)
from multiad_monai.monailabel.studies import build_dataset, check_split, review, select
from multiad_monai.utils import atomic_write

__all__ = ["RetrainTask", "check_train_params", "interrupted_tasks", "CLIENT_KEYS", "SHOWN_KEYS"]

logger = logging.getLogger(__name__)

# set by MONAI Label itself or its clients, not bundle keys
CLIENT_KEYS = {"model", "gpus", "local_rank", "bundle_path", "client_id", "name"}
# what the viewers show as the trainer's options
SHOWN_KEYS = ("epochs", "image_size", "batch_size", "learning_rate", "adversarial_weight", "seed")
# bundle keys the app sets for every run
RESERVED_KEYS = {
    "bundle_root", "dataset_dir", "category", "demo_dir", "output_dir", "ckpt_path", "checkpoint_dir", "data_root",
    "tracking_uri", "experiment_name", "run_name", "resume", "overwrite", "is_main", "imports",
}  # fmt: skip


def _resolve(value: Any, root: str) -> Any:
    """Follow ``"%bundles/common/train.json#key"`` macros (relative to ``root``) to their value."""
    while isinstance(value, str) and value.startswith("%"):
        path, *keys = value[1:].split("#")
        value = ConfigParser.load_config_file(os.path.join(root, path))
        for key in keys:
            value = value[key]
    return value


def bundle_defaults(bundle_dir: str) -> dict[str, Any]:
    """The plain top-level values of ``train.json`` a request may override (numbers, strings, flags, lists)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(bundle_dir)))
    config = ConfigParser.load_config_file(os.path.join(bundle_dir, "train.json"))
    values = {key: _resolve(value, root) for key, value in config.items() if key not in RESERVED_KEYS}

    def plain(value: Any) -> bool:  # a computed scalar ("$...") may be replaced; references and steps may not
        if isinstance(value, list):
            return all(plain(v) and not (isinstance(v, str) and v.startswith("$")) for v in value)
        return isinstance(value, (bool, int, float, type(None))) or isinstance(value, str) and "@" not in value

    return {key: value for key, value in values.items() if plain(value)}


def run_quietly(command: list[str], cwd: str, pass_fds: tuple[int, ...] = ()) -> tuple[int, str]:
    """Run ``command``, passing its output on without traceback frames; returns ``(exit code, last line)``.

    MONAI Label shows the task's last output lines to the client: they should end with the error's message. The
    command runs in its own process group and is killed with this process (also by ``kill -9``, see
    :func:`~multiad_monai.monailabel.runs.die_with_parent`); if reading its output fails, its group is killed
    before the error goes on, so that nothing still writes into a folder the caller then removes.
    """
    parent = os.getpid()
    process = subprocess.Popen(
        command,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        start_new_session=True,
        pass_fds=pass_fds,
        preexec_fn=lambda: die_with_parent(parent),
    )
    last, in_traceback = "", False
    try:
        for line in process.stdout:
            line = line.rstrip()
            if line.startswith("Traceback (most recent call last)"):
                in_traceback = True
                continue
            if in_traceback and (line.startswith(" ") or not line):
                continue
            in_traceback = False
            if line:
                try:
                    print(line, flush=True)
                except OSError:  # the server reading this process's output is gone: keep draining, never fail here
                    pass
                # a failed bundle ends with "error: <message>" between rules (multiad_monai.utils.readable_errors)
                if line.startswith("error: ") or not (last.startswith("error: ") or set(line) <= set("-(). ")):
                    last = line
    finally:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        code = process.wait()
    return code, last


def _same_type(value: Any, default: Any) -> bool:
    if default is None or isinstance(default, str) and default.startswith("$"):
        return True  # computed or unset by default: any value the bundle accepts
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


# numeric train parameters: (low, high, low included, high included); None = unbounded
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "epochs": (1, None, True, False),
    "batch_size": (1, None, True, False),
    "image_size": (32, None, True, False),
    "max_iterations": (1, None, True, False),
    "stop_patience": (1, None, True, False),
    "stop_min_delta": (0, 1, True, False),
    "num_overlays": (0, None, True, False),
    "seed": (0, 2**32 - 1, True, True),
    "learning_rate": (0, 1, False, True),
    "discriminator_learning_rate": (0, 1, False, True),
    "betas": (0, 1, True, False),
    "weight_decay": (0, None, True, False),
    "adversarial_weight": (0, None, True, False),
    "adversarial_warmup": (0, 1, True, True),
    "hard_ratio": (0, 1, False, True),
    "label_smoothing": (0, 0.5, True, False),
    "calibration_fraction": (0, 1, False, False),
    "topk_ratio": (0, 1, False, True),
    "threshold_sigmas": (0, None, False, False),
    "prior_weight": (0, None, True, False),
    "sigma": (0, None, True, False),
    "min_foreground": (0, 1, True, True),
}


def _range_text(low: float | None, high: float | None, low_in: bool, high_in: bool) -> str:
    if high is None:
        return f"{'>=' if low_in else '>'} {low}"
    return f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"


def _check_value(key: str, value: Any) -> None:
    """Finite, and within :data:`RANGES` (each element of a list)."""
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"train parameter {key!r} must be a finite number, got {item!r}")
        if key in RANGES and isinstance(item, (int, float)) and not isinstance(item, bool):
            low, high, low_in, high_in = RANGES[key]
            below = low is not None and (item < low if low_in else item <= low)
            above = high is not None and (item > high if high_in else item >= high)
            if below or above:
                raise ValueError(f"train parameter {key!r} must be {_range_text(*RANGES[key])}, got {item!r}")


def check_train_params(defaults: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """The bundle overrides of a train request, checked against the bundle's own values.

    Raises:
        ValueError: a key the request may not set, a value of the wrong type, not finite or out of range
            (:data:`RANGES`), named with what is accepted.
    """
    overrides = {}
    for key, value in request.items():
        if key in CLIENT_KEYS:
            continue
        if key in RESERVED_KEYS:
            raise ValueError(f"{key!r} is set by the app for every run and cannot be passed to /train")
        if key not in defaults:
            raise ValueError(f"unknown train parameter {key!r}; accepted: {sorted(defaults)}")
        if key == "epochs" and value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ValueError(f"train parameter 'epochs' must be a whole number or null (held-out rule), got {value!r}")
        if not _same_type(value, defaults[key]):
            raise ValueError(
                f"train parameter {key!r} must be like the bundle's {defaults[key]!r} "
                f"({type(defaults[key]).__name__}), got {value!r}"
            )
        _check_value(key, value)
        overrides[key] = value
    return overrides


def _dump(value: Any, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)


def interrupted_tasks(trainers: dict[str, RetrainTask]) -> list[dict[str, Any]]:
    """The runs a dead server or training process left, as ``GET /train/`` tasks (oldest first).

    MONAI Label keeps its tasks in memory: after a restart ``GET /train/`` would know no task at all, although a
    run was interrupted. Each is ``{"id", "model", "status": "INTERRUPTED", "run_dir", "details": [reason],
    "start_ts", "end_ts"}`` (the start from the run folder's name, the end when the restart found it).
    """
    tasks = []
    for name, trainer in trainers.items():
        for run in interrupted(trainer.model.runs_dir):
            run_dir = os.path.join(trainer.model.runs_dir, run)
            try:
                with open(os.path.join(run_dir, INTERRUPTED_FILE), encoding="utf-8") as f:
                    record = json.load(f)
            except (OSError, ValueError) as e:
                record = {"reason": f"its {INTERRUPTED_FILE} cannot be read: {e}"}
            started = run[:15]  # <YYYYmmdd-HHMMSS>-<id>
            try:
                started = time.strftime("%Y-%m-%d %H:%M:%S", time.strptime(started, "%Y%m%d-%H%M%S"))
            except ValueError:
                pass
            tasks.append(
                {
                    "id": run,
                    "model": name,
                    "status": "INTERRUPTED",
                    "run_dir": run_dir,
                    "details": [record.get("reason", "interrupted")],
                    "start_ts": started,
                    "end_ts": record.get("found", ""),
                }
            )
    return sorted(tasks, key=lambda task: task["start_ts"])


class RetrainTask(TrainTask):
    """``POST /train/<model>``: train the bundle on the datastore's normal studies; the result is served next.

    Args:
        model: the served bundle.
    """

    def __init__(self, model: BundleModel) -> None:
        super().__init__(f"Retrain the {model.name} bundle on the studies marked normal")
        self.model = model
        self.defaults = bundle_defaults(model.bundle_dir)

    def config(self) -> dict[str, Any]:
        return {key: self.defaults[key] for key in SHOWN_KEYS if key in self.defaults}

    def stats(self) -> dict[str, Any]:
        path = self.model.checkpoint_path()
        record = os.path.join(os.path.dirname(path), RUN_FILE)
        stopped = {"interrupted": interrupted(self.model.runs_dir)}
        if not os.path.isfile(record):
            return {"ckpt_path": path, "retrained": False, **stopped}
        with open(record, encoding="utf-8") as f:
            return {**json.load(f), "retrained": True, **stopped}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        """Run one retraining; returns the run record (also written to ``run.json``).

        Raises:
            ValueError: bad parameters, too few normal studies, or unusable data (named by the bundle).
        """
        overrides = self.check(request, datastore)
        name = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        run_dir = os.path.join(self.model.runs_dir, name)
        # held by this process and the bundle process until run.json is written: one training of the model at
        # a time, and a folder in use is never taken for an interrupted one
        lock = TrainingLock(self.model.runs_dir, self.model.name).acquire(name, wait=5.0)
        try:
            return self._train(request, datastore, overrides, name, run_dir, lock)
        finally:
            lock.release()

    def check(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        """What the request's training would reject, before a task starts; returns the bundle overrides.

        Raises:
            ValueError: a bad parameter (:func:`check_train_params`), too few normal studies, or a split the
                bundle would find empty (:func:`~multiad_monai.monailabel.studies.check_split`).
        """
        overrides = check_train_params(self.defaults, request)
        values = {**self.defaults, **overrides}
        check_split(select(review(datastore)), values["calibration_fraction"], values["seed"], values["slice_range"])
        return overrides

    def tracking_uri(self) -> str:
        return "sqlite:///" + os.path.join(os.path.abspath(self.model.runs_dir), "mlruns.db")

    def mark_interrupted(self) -> list[str]:
        """Mark the runs a dead server or training process left unfinished (see :mod:`~.runs`)."""
        return mark_interrupted(self.model.runs_dir, self.model.name, RUN_FILE, self.tracking_uri())

    def _train(
        self,
        request: dict[str, Any],
        datastore: Datastore,
        overrides: dict[str, Any],
        name: str,
        run_dir: str,
        lock: TrainingLock,
    ) -> dict[str, Any]:
        os.makedirs(run_dir)
        try:
            studies = build_dataset(review(datastore), os.path.join(run_dir, "dataset"))
            logger.info(f"retraining {self.model.name} in {run_dir} on {studies}")
            start = time.time()
            args = {
                "bundle_root": self.model.bundle_dir,
                "dataset_dir": os.path.join(run_dir, "dataset"),
                "output_dir": run_dir,
                "ckpt_path": os.path.join(run_dir, "model.pt"),
                "tracking_uri": self.tracking_uri(),
                "run_name": f"{self.model.name}-{name}",
                **overrides,
            }
            _dump(args, os.path.join(run_dir, "args.json"))
            command = [
                sys.executable, "-m", "monai.bundle", "run", "training",
                "--config_file", os.path.join(self.model.bundle_dir, "train.json"),
                "--args_file", os.path.join(run_dir, "args.json"),
            ]  # fmt: skip
            root = os.path.dirname(os.path.dirname(os.path.abspath(self.model.bundle_dir)))
            code, last_line = run_quietly(command, cwd=root, pass_fds=(lock.fileno(),))
            if code != 0:
                reason = last_line.removeprefix("error: ")
                raise ValueError(f"the {self.model.name} training bundle failed (exit code {code}): {reason}")
            metrics_file = os.path.join(run_dir, "metrics.json")
            metrics = json.load(open(metrics_file, encoding="utf-8")) if os.path.isfile(metrics_file) else {}
            record = {
                "run": name,
                "ckpt_path": os.path.join(run_dir, "model.pt"),
                "studies": studies,
                "params": overrides,
                "metrics": metrics,
                "seconds": round(time.time() - start, 1),
            }
            # the new checkpoint is served from here on
            atomic_write(os.path.join(run_dir, RUN_FILE), lambda tmp: _dump(record, tmp))
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        logger.info(f"retrained {self.model.name}: {record['ckpt_path']} {metrics}")
        return record
