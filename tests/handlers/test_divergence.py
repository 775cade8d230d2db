"""DivergenceGuard: a non-finite loss, or at the end of an epoch a non-finite weight or buffer, stops training with
a message naming what diverged, when, and the learning rate to lower.
Real training processes that diverge: tests/bundles/test_divergence.py."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine
from monai.utils import CommonKeys as Keys
from torch import nn

from multiad_monai.handlers import DivergenceError, DivergenceGuard


class Trained(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.student = nn.BatchNorm2d(2)


@pytest.mark.parametrize(
    "loss, overflow, message",
    [
        (float("nan"), False, "diverged in epoch 1 (iteration 1): the loss is nan"),
        (1.0, True, "diverged in epoch 1 (iteration 2): 1 tensor (student.running_var) is not finite"),
    ],
)
def test_divergence_stops_training_naming_what_when_and_the_learning_rate(tmp_path, loss, overflow, message):
    network = Trained()

    def step(engine: Engine, batch) -> dict:
        if overflow:
            network.student.running_var.fill_(float("inf"))
        return {Keys.LOSS: torch.tensor(loss)}

    engine = Engine(step)
    DivergenceGuard(network, {"learning_rate": 0.5}, str(tmp_path)).attach(engine)
    with pytest.raises(DivergenceError) as error:
        engine.run([0, 1], max_epochs=2)
    text = str(error.value)
    assert message in text, text
    assert "too high a learning rate (learning_rate 0.5)" in text and "lower --learning_rate" in text
    assert "no checkpoint of this run was saved" in text


def test_finite_training_runs_to_the_end():
    network = Trained()
    engine = Engine(lambda engine, batch: {Keys.LOSS: torch.tensor(1.0)})
    DivergenceGuard(network).attach(engine)
    assert engine.run([0, 1], max_epochs=2).epoch == 2
