"""Test-only fault injection: kill the training process (SIGKILL, no clean-up) at one named point.

Armed by ``tests/bundles/fault_probe.json`` (merged after a bundle's train.json) before the bundle's own
handlers are attached, so a kill at the end of training comes before calibration.
"""

from __future__ import annotations

import json
import os
import signal
import types

import torch
from ignite.engine import Engine, Events

from multiad_monai.handlers import metrics_writer

POINTS = ("mid_epoch", "checkpoint_write", "calibration", "evaluation", "metrics_write")
# not kills: the run goes on with a broken model and must stop by itself
DIVERGE = "diverge_epoch_2"


def _kill(*_) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _partial_then_kill(original, when):
    """Wrap a writer: when ``when(obj)`` holds, it writes a truncated file, then the process dies."""

    def writer(obj, target, *args, **kwargs):
        if not when(obj):
            return original(obj, target, *args, **kwargs)
        if hasattr(target, "write"):
            target.write(b"\0" * 64 if "b" in getattr(target, "mode", "b") else "{")
            target.flush()
        else:
            with open(target, "wb") as f:
                f.write(b"\0" * 64)
        _kill()

    return writer


def arm(point: str | None, trainer: Engine, evaluator: Engine) -> None:
    """Register the kill for ``point`` (one of :data:`POINTS`; None does nothing)."""
    if not point:
        return
    if point == DIVERGE:  # one batch-norm statistic of the student overflows in epoch 2, as a too high lr does

        @trainer.on(Events.EPOCH_STARTED(once=2))
        def _arm_overflow(engine: Engine) -> None:
            def overflow(_: Engine) -> None:
                next(b for n, b in engine.network.student.named_buffers() if n.endswith("running_var")).fill_(
                    float("inf")
                )

            engine.add_event_handler(Events.ITERATION_COMPLETED(once=engine.state.iteration + 1), overflow)

        return
    if point not in POINTS:
        raise ValueError(f"unknown fault point {point!r}; choose one of {POINTS + (DIVERGE,)}")
    if point == "mid_epoch":  # two iterations into epoch 2

        @trainer.on(Events.EPOCH_STARTED(once=2))
        def _arm_halfway(engine: Engine) -> None:
            engine.add_event_handler(Events.ITERATION_COMPLETED(once=engine.state.iteration + 2), _kill)

    elif point == "checkpoint_write":  # while the epoch-2 checkpoint is being written

        def epoch_two(obj) -> bool:
            trainer_state = obj.get("trainer", {}) if isinstance(obj, dict) else {}
            return trainer_state.get("iteration", 0) == 2 * trainer_state.get("epoch_length", -1)

        torch.save = _partial_then_kill(torch.save, epoch_two)
    elif point == "calibration":  # training done, calibration not yet stored
        trainer.add_event_handler(Events.COMPLETED, _kill)
    elif point == "evaluation":
        evaluator.add_event_handler(Events.ITERATION_COMPLETED(once=1), _kill)
    else:  # metrics.json being written: everything before it is done
        metrics_writer.json = types.SimpleNamespace(dump=_partial_then_kill(json.dump, lambda obj: True))
