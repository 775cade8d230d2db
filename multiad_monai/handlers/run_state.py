"""One training run, one MLflow run, one clock: what a killed and resumed run must continue, and the guard that
keeps a rerun from destroying earlier results."""

from __future__ import annotations

import glob
import logging
import os
import time
import uuid
from collections.abc import Mapping
from typing import Any

import torch
from filelock import FileLock
from ignite.engine import Engine, Events

from multiad_monai.handlers.checkpoints import last_checkpoint
from multiad_monai.utils.errors import check_path

__all__ = [
    "TrainingRunState",
    "PruneStaleCheckpoints",
    "check_before_training",
    "check_resume",
    "create_tracking_store",
    "terminate_mlflow_run",
]

logger = logging.getLogger(__name__)


def check_before_training(
    output_dir: str, ckpt_path: str, checkpoint_dir: str, resume: bool, overwrite: bool, epochs: int | None
) -> None:
    """Cheap checks that refuse, before any data is read and anything is written or deleted, a training run that
    cannot work or would destroy results.

    Raises:
        ValueError: ``epochs`` neither None (stop by the held-out rule) nor a whole number >= 1; ``output_dir``
            is a file or not writable; or it already holds a finished or unfinished run and neither ``resume`` nor
            ``overwrite`` says what to do with it.
    """
    if epochs is not None and (not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1):
        raise ValueError(f"epochs must be a whole number >= 1 or null (stop when learned), got {epochs!r} (--epochs N)")
    check_path(output_dir, "output_dir")
    check_path(ckpt_path, "ckpt_path")
    if os.path.lexists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"output_dir {output_dir} is a file, not a folder: pass --output_dir with a folder")
    os.makedirs(output_dir, exist_ok=True)
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise ValueError(f"output_dir {output_dir} is not writable: pass --output_dir with a folder you can write")
    # a write killed half-way leaves a temporary file (ignite's tmp* checkpoints, our .<name>.<id>.tmp files):
    # garbage by definition, never read by anything
    partials = glob.glob(os.path.join(checkpoint_dir, "tmp*")) + glob.glob(os.path.join(output_dir, ".*.tmp"))
    for partial in partials:
        if os.path.isfile(partial) and not partial.endswith(".pt"):
            os.remove(partial)
            logger.info(f"removed {partial}, left by a write that was interrupted")
    last = last_checkpoint(checkpoint_dir)
    finished = [p for p in (ckpt_path, os.path.join(output_dir, "metrics.json")) if os.path.isfile(p)]
    metrics = os.path.join(output_dir, "metrics.json")
    if resume and not overwrite and os.path.isfile(metrics):
        raise ValueError(
            f"{output_dir} holds a finished training run ({', '.join(finished)}); --resume True continues a killed run "
            "only and would train this one again. To train again pass --overwrite True (its files are replaced only "
            "once the new run has trained its first epoch) or another --output_dir; to evaluate it, run the "
            "'evaluating' workflow"
        )
    if resume or overwrite or not (last or finished):
        return
    what = f"a finished training run ({', '.join(finished)})" if finished else f"an unfinished run ({last})"
    raise ValueError(
        f"{output_dir} already holds {what}. Pass --resume true to continue it, --overwrite true to replace it "
        "(its files are replaced only once the new run has trained its first epoch), or another --output_dir"
    )


def _plain(value: Any) -> Any:
    """Tuples as lists, so that a value read back from a checkpoint compares equal to the config's."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def check_resume(checkpoint_dir: str, resume: bool, params: Mapping[str, Any]) -> None:
    """Refuse, before anything is loaded or trained, a resume whose hyper-parameters differ from the run it would
    continue (stored in its epoch checkpoints by :class:`TrainingRunState`): a resumed run is the same run.

    Raises:
        ValueError: naming each differing key with the stored and the given value, and the ways out.
    """
    if not resume:
        return
    stored = _stored_run(checkpoint_dir).get("params")
    if not isinstance(stored, Mapping):  # nothing to resume, or a checkpoint written before params were stored
        return
    given = _plain(dict(params))
    stored = _plain(dict(stored))
    differing = [key for key in sorted(set(stored) | set(given)) if stored.get(key, "unset") != given.get(key, "unset")]
    if differing:
        details = "; ".join(
            f"{key}: stored {stored.get(key, 'unset')!r}, given {given.get(key, 'unset')!r}" for key in differing
        )
        raise ValueError(
            f"--resume True continues the run in {last_checkpoint(checkpoint_dir)} with the same hyper-parameters, "
            f"but {len(differing)} differ ({details}). Resume with the stored values, or start a new run with "
            "--overwrite True (the old files are replaced once it has trained an epoch) or another --output_dir"
        )


def create_tracking_store(tracking_uri: str) -> None:
    """Create (and migrate) a SQLite MLflow store under a file lock, so that two runs starting together into a
    new store do not both run its schema migrations."""
    if not tracking_uri.startswith("sqlite:///"):
        return
    import mlflow

    path = tracking_uri[len("sqlite:///") :]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with FileLock(path + ".lock"):
        mlflow.MlflowClient(tracking_uri).search_experiments(max_results=1)


def terminate_mlflow_run(tracking_uri: str, run_name: str, status: str) -> None:
    """Mark the MLflow runs named ``run_name`` that are still ``RUNNING`` (dead processes leave them so) ``status``."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    try:
        runs = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            filter_string=f"attributes.run_name = '{run_name}' and attributes.status = 'RUNNING'",
        )
    except Exception as e:  # a store that cannot be read must not hide the run's own error
        logger.warning(f"cannot mark MLflow run {run_name} {status}: {e}")
        return
    for run in runs:
        client.set_terminated(run.info.run_id, status=status)
        logger.info(f"MLflow run {run_name} ({run.info.run_id}) marked {status}")


def _stored_run(checkpoint_dir: str) -> dict:
    last = last_checkpoint(checkpoint_dir)
    if last is None:
        return {}
    try:
        return dict(torch.load(last, map_location="cpu", weights_only=True).get("run_state", {}))
    except Exception as e:  # an unreadable checkpoint is reported by the CheckpointLoader with its name
        logger.warning(f"cannot read the run state of {last}: {e}")
        return {}


class TrainingRunState:
    """The MLflow run name and the training time of one training run, kept across kill and resume.

    It is saved in every epoch checkpoint (add it to the checkpointed objects); a resumed run reads it back,
    continues the same MLflow run and adds its own time. A new run gets a new, unique MLflow run name, so it
    never attaches to another (dead or concurrent) run. When a run fails with an exception its MLflow run is
    marked ``FAILED``; when a new run replaces (``overwrite``) a killed one, the killed one is marked ``KILLED``.

    Args:
        checkpoint_dir: where the epoch checkpoints are.
        resume: this run continues the last checkpoint.
        tracking_uri: the MLflow store.
        run_name: a name chosen by the user (default: ``train_<time>_<unique>``).
        params: the run's hyper-parameters, stored so that a resume can be checked against them
            (:func:`check_resume`).
    """

    def __init__(
        self,
        checkpoint_dir: str,
        resume: bool,
        tracking_uri: str | None = None,
        run_name: str | None = None,
        params: Mapping[str, Any] | None = None,
    ):
        stored = _stored_run(checkpoint_dir)
        self.params = _plain(dict(params or {}))
        self.tracking_uri = tracking_uri
        self.seconds = 0.0
        self._started: float | None = None
        if resume and stored.get("run_name"):
            self.run_name = stored["run_name"]
        else:
            self.run_name = run_name or f"train_{time.strftime('%Y%m%d_%H%M%S')}_{uuid.uuid4().hex[:6]}"
            if stored.get("run_name"):
                self._terminate(stored["run_name"], "KILLED")

    @property
    def elapsed(self) -> float:
        """Seconds trained so far, over every resume."""
        return self.seconds + (time.perf_counter() - self._started if self._started is not None else 0.0)

    def state_dict(self) -> dict:
        return {"run_name": self.run_name, "seconds": self.elapsed, "params": self.params}

    def load_state_dict(self, state: dict) -> None:
        self.seconds = float(state["seconds"])

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.COMPLETED, self._stop)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._failed)

    def _start(self, engine: Engine) -> None:
        self._started = time.perf_counter()

    def _stop(self, engine: Engine) -> None:
        self.seconds, self._started = self.elapsed, None

    def _failed(self, engine: Engine, error: Exception) -> None:
        self._stop(engine)
        self._terminate(self.run_name, "FAILED")
        raise error

    def _terminate(self, run_name: str, status: str) -> None:
        if self.tracking_uri:
            terminate_mlflow_run(self.tracking_uri, run_name, status)


class PruneStaleCheckpoints:
    """Remove the epoch checkpoints of an earlier run once this run has trained its first epoch.

    Until then they stay, so a run that dies while loading data or in its first epoch destroys nothing.
    """

    def __init__(self, checkpoint_dir: str) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.stale: dict[str, tuple[int, int]] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED(once=1), self)

    @staticmethod
    def _identity(path: str) -> tuple[int, int]:
        stat = os.stat(path)
        return stat.st_ino, stat.st_mtime_ns

    def _collect(self, engine: Engine) -> None:
        paths = glob.glob(os.path.join(self.checkpoint_dir, "*epoch=*.pt"))
        self.stale = {path: self._identity(path) for path in paths}

    def __call__(self, engine: Engine) -> None:
        # a file this run rewrote under the same name (atomic saves make a new inode) is not stale
        removed = [p for p, identity in self.stale.items() if os.path.exists(p) and self._identity(p) == identity]
        for path in removed:
            os.remove(path)
        if removed:
            logger.info(f"removed {len(removed)} checkpoint(s) of the run this one replaces")
        self.stale = {}
