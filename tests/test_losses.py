from __future__ import annotations

import pytest
import torch

from multiad_monai.losses import AdversarialLoss, DistillationLoss


def test_distillation_loss_is_zero_for_equal_and_two_for_opposite_features():
    features = [torch.rand(2, 4, 8, 8) + 0.1, torch.rand(2, 6, 4, 4) + 0.1]
    loss = DistillationLoss()
    assert loss(features, features).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(features, [-f for f in features]).item() == pytest.approx(2.0, abs=1e-5)


def test_distillation_loss_weights_scales():
    t = [torch.ones(1, 2, 2, 2), torch.ones(1, 2, 2, 2)]
    s = [torch.ones(1, 2, 2, 2), -torch.ones(1, 2, 2, 2)]
    assert DistillationLoss([3.0, 1.0])(t, s).item() == pytest.approx(0.5)


def test_hard_mining_weights_the_worst_positions():
    teacher = torch.ones(1, 2, 4, 4)
    student = teacher.clone()
    student[0, :, 0, 0] = -1.0  # one of 16 positions is opposite: distance 2 there, 0 elsewhere
    assert DistillationLoss()([teacher], [student]).item() == pytest.approx(2 / 16)
    # half the plain mean plus half the mean of the hardest 1/16 of positions
    assert DistillationLoss(hard_ratio=1 / 16)([teacher], [student]).item() == pytest.approx(0.5 * 2 / 16 + 0.5 * 2)
    with pytest.raises(ValueError, match="hard_ratio"):
        DistillationLoss(hard_ratio=1.5)


def test_distillation_loss_checks_scale_count():
    with pytest.raises(ValueError, match="2 teacher and 1 student"):
        DistillationLoss()([torch.ones(1)] * 2, [torch.ones(1)])


def test_adversarial_loss_targets():
    loss = AdversarialLoss()
    confident_real = torch.full((4, 1), 10.0)
    assert loss(confident_real, is_teacher=True).item() < 1e-3
    assert loss(confident_real, is_teacher=False).item() > 5


def test_label_smoothing_moves_the_teacher_target():
    logits = torch.zeros(3, 1)
    smoothed = AdversarialLoss(real_label=0.9)
    # BCE(0 logit, 0.9) equals BCE(0 logit, 1) at p = 0.5; the optimum moves from +inf to logit(0.9)
    optimum = torch.full((3, 1), float(torch.logit(torch.tensor(0.9))), requires_grad=True)
    smoothed(optimum, is_teacher=True).backward()
    assert optimum.grad.abs().max() < 1e-6
    assert smoothed(logits, is_teacher=False).item() == pytest.approx(AdversarialLoss()(logits, False).item())
    with pytest.raises(ValueError, match="real_label"):
        AdversarialLoss(real_label=0.3)
