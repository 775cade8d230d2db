"""Retrain runs on disk: one training of a model at a time, processes that die with the server, and the runs a
dead server left behind marked interrupted (never deleted).

A training holds ``<runs_dir>/.training.lock`` (``fcntl.flock``) from before its run folder exists until its
``run.json`` is written; the bundle process inherits the lock, so it stays held while any process of the run
lives, across a server restart too. A run folder without ``run.json`` whose lock is free belongs to no living
process: it is marked with ``interrupted.json`` and its MLflow run ``KILLED``.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import signal
import time
from typing import Any

__all__ = ["INTERRUPTED_FILE", "TrainingBusy", "TrainingLock", "die_with_parent", "mark_interrupted", "interrupted"]

logger = logging.getLogger(__name__)

LOCK_FILE = ".training.lock"
INTERRUPTED_FILE = "interrupted.json"
_PR_SET_PDEATHSIG = 1


class TrainingBusy(RuntimeError):
    """Another training of the same model is running; the message names its run and process."""


def die_with_parent(parent_pid: int | None = None) -> None:
    """Have the kernel kill this process (``SIGKILL``) when its parent dies, also by ``kill -9`` (Linux).

    Args:
        parent_pid: the parent expected now; if it is already gone, this process ends at once.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the process group and the lock still protect the runs
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)


class TrainingLock:
    """The lock one training of a model holds (``flock`` on ``<runs_dir>/.training.lock``).

    Args:
        runs_dir: the model's retrain runs folder.
        model: the model's name, for messages.
    """

    def __init__(self, runs_dir: str, model: str) -> None:
        self.path = os.path.join(runs_dir, LOCK_FILE)
        self.model = model
        self._file = None

    def fileno(self) -> int:
        return self._file.fileno()

    def acquire(self, run: str = "", wait: float = 0.0) -> TrainingLock:
        """Take the lock, waiting up to ``wait`` seconds (a request check may hold it shared for an instant).

        Raises:
            TrainingBusy: another training holds it; the message names its run and process.
        """
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self._holder(handle)
                    handle.close()
                    raise self._busy(holder) from None
                time.sleep(0.1)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"run": run, "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        handle.flush()
        self._file = handle
        return self

    def check_free(self) -> None:
        """Raise :class:`TrainingBusy` when a training holds the lock (tested shared, without taking it)."""
        if not os.path.isfile(self.path):
            return
        with open(self.path, encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._busy(self._holder(handle)) from None

    @staticmethod
    def _holder(handle) -> str:
        handle.seek(0)
        return handle.read().strip() or "unknown run"

    def _busy(self, holder: str) -> TrainingBusy:
        return TrainingBusy(
            f"model {self.model!r} is already being trained ({holder}); one training of a model runs at a time: "
            "wait until it ends (GET /train/) or stop it (DELETE /train/)"
        )

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the last descriptor releases the flock
            self._file = None

    def __enter__(self) -> TrainingLock:
        return self.acquire()

    def __exit__(self, *_: Any) -> None:
        self.release()


def interrupted(runs_dir: str) -> list[str]:
    """Names of the runs marked interrupted, oldest first."""
    if not os.path.isdir(runs_dir):
        return []
    return sorted(run for run in os.listdir(runs_dir) if os.path.isfile(os.path.join(runs_dir, run, INTERRUPTED_FILE)))


def mark_interrupted(runs_dir: str, model: str, finished_file: str, tracking_uri: str | None = None) -> list[str]:
    """Mark the unfinished runs no process works on: ``interrupted.json`` in the folder (kept, with whatever it
    holds) and the MLflow run ``<model>-<run>`` ``KILLED``. Does nothing while a training of the model runs.

    Returns:
        the runs marked now.
    """
    if not os.path.isdir(runs_dir):
        return []
    try:
        lock = TrainingLock(runs_dir, model).acquire("marking interrupted runs")
    except TrainingBusy:
        return []
    marked = []
    try:
        for run in sorted(os.listdir(runs_dir)):
            folder = os.path.join(runs_dir, run)
            done = (finished_file, INTERRUPTED_FILE)
            if (
                not os.path.isdir(folder)
                or run.startswith(".")
                or any(os.path.exists(os.path.join(folder, f)) for f in done)
            ):
                continue
            record = {
                "run": run,
                "status": "INTERRUPTED",
                "reason": "its training process ended before the run finished (server stopped or killed); the "
                "folder is kept as it was, the model served is unchanged. Start a new one with POST /train/" + model,
                "found": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            with open(os.path.join(folder, INTERRUPTED_FILE), "w", encoding="utf-8") as f:
                json.dump(record, f, indent=2)
            if tracking_uri:
                from multiad_monai.handlers.run_state import terminate_mlflow_run

                terminate_mlflow_run(tracking_uri, f"{model}-{run}", "KILLED")
            logger.warning(f"retrain run {folder} was interrupted (no process works on it): marked {INTERRUPTED_FILE}")
            marked.append(run)
    finally:
        lock.release()
    return marked
