"""Fill the model's normal-image statistics after training, so the checkpoint is self-contained."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ignite.engine import Engine, Events

from multiad_monai.calibration import calibrate
from multiad_monai.networks.multiad import MultiAD
from multiad_monai.networks.normalizer import prior_gain

__all__ = ["CalibrationHandler"]


class CalibrationHandler:
    """On ``COMPLETED``, run :func:`multiad_monai.calibration.calibrate` on the trained model and log what it chose.

    When :class:`~multiad_monai.handlers.HeldOutStopping` ended training because the student started to memorise
    (``engine.state.student_memorises``), an adaptive prior gets its full gain: it is to lead from there on.

    Args:
        network: the trained :class:`MultiAD`.
        data_loader: normal images not used for training (batches of dicts with ``image``).
        train_data_loader: all training images, for the batch-norm statistics (skipped when None) and the
            teacher prior.
        event: when to calibrate; defaults to the end of training.
    """

    def __init__(
        self,
        network: MultiAD,
        data_loader: Iterable,
        train_data_loader: Iterable | None = None,
        event: Events = Events.COMPLETED,
    ) -> None:
        self.network = network
        self.data_loader = data_loader
        self.train_data_loader = train_data_loader
        self.event = event
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(self.event, self)

    def __call__(self, engine: Engine) -> None:
        memorises = getattr(engine.state, "student_memorises", False) if engine is not None else False
        gain = prior_gain(float("inf")) if memorises else None
        result = calibrate(self.network, self.data_loader, self.train_data_loader, prior_gain=gain)
        if result.reference_ratio is not None:
            reference = "nearest normal feature" if self.network.prior.uses_nearest else "mean normal feature"
            self.logger.info(f"teacher prior: nearest / mean distance {result.reference_ratio:.3f} -> {reference}")
        if result.prior_gain is not None:
            weight = self.network.recipe.prior_weight
            self.logger.info(f"teacher prior: weight {weight:g} x gain {result.prior_gain:.2f}")
        self.logger.info(
            f"calibrated on {result.images} normal images: image threshold "
            f"{self.network.image_threshold.item():.4f}, pixel threshold {self.network.pixel_threshold.item():.4f}"
        )
