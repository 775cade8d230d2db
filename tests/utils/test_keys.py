from __future__ import annotations

import pytest
import torch

import multiad_monai.engines
from multiad_monai.utils import MultiADKeys, loss_logs


@pytest.mark.parametrize("name", ["MultiADKeys", "MultiADIterationEvents", "loss_logs"])
def test_engines_reexport_for_bundles(name):
    # the bundles refer to `$multiad_monai.engines.loss_logs`
    assert getattr(multiad_monai.engines, name) is getattr(multiad_monai.utils, name)


@pytest.mark.parametrize(
    "output, expected",
    [
        ({"loss": torch.tensor(1.0), "image": torch.zeros(1)}, {"loss": 1.0}),
        (
            {"loss": torch.tensor(3.0), MultiADKeys.DISTILLATION_LOSS: 2.0, MultiADKeys.DISCRIMINATOR_LOSS: 0.5},
            {"loss": 3.0, "distillation_loss": 2.0, "discriminator_loss": 0.5},
        ),
        ({}, {}),
    ],
)
def test_loss_logs_keeps_scalar_losses(output, expected):
    assert loss_logs(output) == expected
