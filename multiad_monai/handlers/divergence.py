"""Stop a diverged training run before anything of it is saved: a non-finite loss, weight or buffer.

A too high learning rate does not always show in the loss: the student's ``1 - cos`` stays bounded while its
weights grow until a batch-norm variance overflows to ``inf``. Such a model still scores images, so it must be
stopped where it happens, before the epoch's checkpoint, calibration and the final ``model.pt``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys as Keys

from multiad_monai.handlers.checkpoints import last_checkpoint
from multiad_monai.utils.finite import DivergenceError, listing, nonfinite_tensors

__all__ = ["DivergenceError", "DivergenceGuard", "nonfinite_tensors"]


class DivergenceGuard:
    """Raise :class:`DivergenceError` as soon as the loss, or at the end of an epoch any trained weight or buffer
    (the student's and the discriminator's), is not finite.

    Attach it before the epoch checkpoint saver, so the diverged epoch is never saved and the last good
    checkpoint stays; the run's other handlers see the exception (the MLflow run is marked ``FAILED`` by
    :class:`~multiad_monai.handlers.TrainingRunState`).

    Args:
        network: the trained :class:`~multiad_monai.networks.MultiAD` (unwrapped from DDP).
        learning_rates: the bundle keys that set the step sizes, named in the message as the likely cause.
        checkpoint_dir: where the epoch checkpoints are, to name the last good one.
        output_transform: the loss from ``engine.state.output``.
        modules: the trained sub-modules to check.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        learning_rates: Mapping[str, float] | None = None,
        checkpoint_dir: str | None = None,
        output_transform: Callable[[Any], Any] = lambda output: output[Keys.LOSS],
        modules: tuple[str, ...] = ("student", "discriminator"),
    ) -> None:
        self.network = network
        self.learning_rates = dict(learning_rates or {})
        self.checkpoint_dir = checkpoint_dir
        self.output_transform = output_transform
        self.modules = modules

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.check_loss)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.check_weights)

    def check_loss(self, engine: Engine) -> None:
        loss = self.output_transform(engine.state.output)
        if not bool(torch.isfinite(torch.as_tensor(loss)).all()):
            self._fail(engine, f"the loss is {float(torch.as_tensor(loss).float().mean())}")

    def check_weights(self, engine: Engine) -> None:
        bad = [
            f"{name}.{key}"
            for name in self.modules
            if hasattr(self.network, name)
            for key in nonfinite_tensors(getattr(self.network, name).state_dict())
        ]
        if bad:
            self._fail(engine, f"{listing(bad)} {'is' if len(bad) == 1 else 'are'} not finite")

    def _fail(self, engine: Engine, what: str) -> None:
        rates = ", ".join(f"{key} {value:g}" for key, value in self.learning_rates.items())
        options = " / ".join(f"--{key}" for key in self.learning_rates) or "the learning rate"
        cause = f"too high a learning rate ({rates})" if rates else "too high a learning rate"
        last = last_checkpoint(self.checkpoint_dir) if self.checkpoint_dir else None
        kept = f"the last good checkpoint {last} is kept" if last else "no checkpoint of this run was saved"
        raise DivergenceError(
            f"training diverged in epoch {engine.state.epoch} (iteration {engine.state.iteration}): {what}. "
            f"The likely cause is {cause}: rerun with a lower {options} and --overwrite True (or another "
            f"--output_dir). Nothing of this epoch was saved; {kept}"
        )
