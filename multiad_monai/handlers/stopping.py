"""End training when the student has learned what it can of the normal images, judged on held-out normal images."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping

import ignite.distributed as idist
from ignite.engine import Engine, Events

from multiad_monai.networks.multiad import MultiAD
from multiad_monai.networks.normalizer import prior_gain
from multiad_monai.stopping import student_distance

__all__ = ["HeldOutStopping"]


class HeldOutStopping:
    """Stop the trainer once the student has learned what holds on held-out normal images.

    Every ``interval`` iterations the student's mean ``1 - cos`` to the teacher
    (:func:`~multiad_monai.stopping.student_distance`) is measured on the held-out images (the calibration
    split) and on as many training images. The rule fires when either

    - the held-out distance has not fallen by ``min_delta`` (relative) below its best for ``patience`` checks
      (``ignite.handlers.EarlyStopping``'s rule in ``"min"`` mode with a relative, cumulative threshold): more
      steps no longer teach the student anything that holds on new normal images; or
    - the generalisation gap (held-out over training distance, relative to the untrained student's, so that
      harder held-out images do not count) rises above the adaptive prior's noise level
      (:func:`~multiad_monai.networks.normalizer.prior_gain`): the student starts to memorise its training
      images; from there on the student-free prior is to lead, and calibration gives an adaptive prior its
      full gain (``engine.state.student_memorises``).

    Training then ends after a cool-down of ``cooldown`` times the iterations trained so far, over which the
    learning rate falls to 0 along a cosine (:meth:`lr_factor`, for ``torch.optim.lr_scheduler.LambdaLR``), as a
    schedule planned for that length would have ended. The trainer's ``max_epochs`` stays the upper budget. Each
    check is logged and kept in ``engine.state.metrics`` (``held_out_distance``, ``generalisation_gap``; the
    MLflow handler logs them); :attr:`reason` says why training ended (None when the budget ran out).

    Args:
        network: the :class:`MultiAD` being trained (unwrapped from DDP).
        data_loader: held-out normal images (batches of dicts with ``image``).
        train_data_loader: training images in a fixed order, with their cached teacher features when there are.
        interval: iterations between checks.
        patience: checks without improvement before stopping.
        min_delta: the relative fall of the held-out distance per check that counts as an improvement.
        cooldown: the cool-down's length, as a fraction of the iterations trained when the rule fires (0: stop
            at once).
    """

    def __init__(
        self,
        network: MultiAD,
        data_loader: Iterable,
        train_data_loader: Iterable,
        interval: int = 1,
        patience: int = 1,
        min_delta: float = 0.25,
        cooldown: float = 0.25,
    ) -> None:
        if interval < 1 or patience < 1 or not 0.0 <= min_delta < 1.0 or cooldown < 0.0:
            raise ValueError(
                "need interval >= 1, patience >= 1, 0 <= min_delta < 1 and cooldown >= 0, got "
                f"{interval}, {patience}, {min_delta}, {cooldown}"
            )
        self.network = network
        self.data_loader = data_loader
        self.train_data_loader = train_data_loader
        self.interval = interval
        self.patience = patience
        self.min_delta = min_delta
        self.cooldown = cooldown
        self.decided_at: int | None = None  # the iteration the rule fired
        self.cooldown_iterations = 0
        self.baseline_gap: float | None = None  # the untrained student's
        self.memorises = False  # the gap fired the rule
        self.best_distance: float | None = None
        self.checks_without_improvement = 0
        self.reason: str | None = None
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.measure_baseline)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.end_cooldown)

    def distances(self) -> tuple[float, float]:
        """The student's distance on the held-out images and on as many training images."""
        held_out = student_distance(self.network, self.data_loader)
        train = student_distance(self.network, self.train_data_loader, max_images=_count(self.data_loader))
        return held_out, train

    def measure_baseline(self, engine: Engine) -> None:
        engine.state.student_memorises = self.memorises  # for calibration (a resumed run's, from its checkpoint)
        if self.baseline_gap is None:  # a resumed run keeps the one of its start
            held_out, train = self.distances()
            self.baseline_gap = held_out / max(train, 1e-12)

    def lr_factor(self, step: int) -> float:
        """The learning rate's factor after ``step`` iterations: 1, then a cosine to 0 over the cool-down."""
        if self.decided_at is None or step <= self.decided_at:
            return 1.0
        done = min(1.0, (step - self.decided_at) / max(self.cooldown_iterations, 1))
        return 0.5 * (1.0 + math.cos(math.pi * done))

    def end_cooldown(self, engine: Engine) -> None:
        if self.decided_at is not None and engine.state.iteration >= self.decided_at + self.cooldown_iterations:
            engine.terminate()

    def __call__(self, engine: Engine) -> None:
        if self.decided_at is not None:  # cooling down
            return
        held_out, train = self.distances()
        gap = held_out / max(train, 1e-12) / self.baseline_gap
        engine.state.metrics.update(held_out_distance=held_out, generalisation_gap=gap)
        self.logger.info(
            f"iteration {engine.state.iteration}: held-out distance {held_out:.4f}, generalisation gap {gap:.4f}"
        )
        if prior_gain(gap) > 1.0:
            self.memorises = True
            self.reason = f"the student starts to memorise its training images (generalisation gap {gap:.3f})"
        elif self.best_distance is None or held_out < self.best_distance * (1.0 - self.min_delta):
            self.best_distance, self.checks_without_improvement = held_out, 0
        else:
            self.checks_without_improvement += 1
            if self.checks_without_improvement >= self.patience:
                self.reason = (
                    f"the held-out distance fell less than {self.min_delta:.1%} below its best "
                    f"({self.best_distance:.4f}) in {self.patience} check(s)"
                )
        if idist.get_world_size() > 1:  # rank 0 decides, so that every rank stops at the same iteration
            self.reason = idist.broadcast(self.reason or "", src=0, safe_mode=True) or None
        engine.state.student_memorises = self.memorises
        if self.reason:
            self.decided_at = engine.state.iteration
            self.cooldown_iterations = math.ceil(self.cooldown * self.decided_at)
            self.logger.info(
                f"stopping after iteration {self.decided_at + self.cooldown_iterations} ({self.cooldown_iterations} "
                f"of learning-rate cool-down): {self.reason}"
            )

    def state_dict(self) -> dict:
        return {
            "best_distance": self.best_distance,
            "checks_without_improvement": self.checks_without_improvement,
            "baseline_gap": self.baseline_gap,
            "reason": self.reason,
            "memorises": self.memorises,
            "decided_at": self.decided_at,
            "cooldown_iterations": self.cooldown_iterations,
        }

    def load_state_dict(self, state: Mapping) -> None:
        self.best_distance = state.get("best_distance")
        self.checks_without_improvement = state.get("checks_without_improvement", 0)
        self.baseline_gap = state.get("baseline_gap")
        self.reason = state.get("reason")
        self.memorises = state.get("memorises", False)
        self.decided_at = state.get("decided_at")
        self.cooldown_iterations = state.get("cooldown_iterations", 0)


def _count(loader: Iterable) -> int:
    dataset = getattr(loader, "dataset", None)
    return len(dataset) if dataset is not None else sum(1 for _ in loader)
