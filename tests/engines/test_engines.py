from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader

from multiad_monai.engines import MultiADEvaluator, MultiADIterationEvents, MultiADKeys, MultiADTrainer, loss_logs
from multiad_monai.engines.trainer import random_square_crop
from multiad_monai.metrics import ImageAUROC, PixelAUROC
from multiad_monai.networks import MultiAD
from multiad_monai.recipe import Recipe


def _loader(n: int = 8, size: int = 32, with_masks: bool = False):
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        item = {"image": torch.rand(3, size, size, generator=g), "label": i % 2}
        if with_masks:
            mask = torch.zeros(1, size, size)
            if i % 2:
                mask[:, 4:12, 4:12] = 1
            item["mask"] = mask
        items.append(item)
    return DataLoader(items, batch_size=4)


def _trainer(network, adversarial_weight, amp=False, **kwargs):
    return MultiADTrainer(
        amp=amp,
        device="cpu",
        max_epochs=2,
        train_data_loader=_loader(),
        network=network,
        optimizer=torch.optim.Adam(network.student.parameters(), 1e-3),
        discriminator_optimizer=torch.optim.Adam(network.discriminator.parameters(), 1e-3),
        adversarial_weight=adversarial_weight,
        **kwargs,
    )


def test_training_step_fires_events_in_order_and_updates_only_student_and_discriminator():
    torch.manual_seed(0)
    network = MultiAD(Recipe.paper())
    teacher_before = [p.clone() for p in network.teacher.parameters()]
    disc_before = [p.clone() for p in network.discriminator.parameters()]
    trainer = _trainer(network, adversarial_weight=0.1)
    fired = []
    for event in MultiADIterationEvents:
        trainer.add_event_handler(event, lambda engine, e=event: fired.append(e))
    trainer.run()
    assert fired[:5] == list(MultiADIterationEvents)
    assert len(fired) == 5 * 4  # 2 epochs x 2 iterations
    assert set(loss_logs(trainer.state.output)) == {
        "loss",
        "distillation_loss",
        "adversarial_loss",
        "discriminator_loss",
    }
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, network.teacher.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(disc_before, network.discriminator.parameters()))


@pytest.mark.slow
def test_stabilisers_train_student_and_discriminator():
    torch.manual_seed(0)
    network = MultiAD(Recipe.paper(image_size=32, discriminator_spectral_norm=True))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in network.discriminator.modules())
    student_before = [p.clone() for p in network.student.parameters()]
    disc_before = [p.clone() for p in network.discriminator.parameters()]
    trainer = _trainer(network, adversarial_weight=0.1, label_smoothing=0.1, feature_matching=True)
    assert trainer.discriminator_loss.real_label == pytest.approx(0.9)
    trainer.run()
    output = trainer.state.output
    assert torch.isfinite(output[MultiADKeys.ADVERSARIAL_LOSS]) and output[MultiADKeys.ADVERSARIAL_LOSS] >= 0
    assert not all(torch.equal(a, b) for a, b in zip(student_before, network.student.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(disc_before, network.discriminator.parameters()))
    with pytest.raises(ValueError, match="label_smoothing"):
        _trainer(network, adversarial_weight=0.1, label_smoothing=0.5)


def test_zero_adversarial_weight_is_pure_distillation():
    torch.manual_seed(0)
    network = MultiAD(Recipe.paper())
    disc_before = [p.clone() for p in network.discriminator.parameters()]
    trainer = _trainer(network, adversarial_weight=0.0)
    trainer.run()
    assert MultiADKeys.DISCRIMINATOR_LOSS not in trainer.state.output
    assert trainer.state.output["loss"] == trainer.state.output[MultiADKeys.DISTILLATION_LOSS]
    assert all(torch.equal(a, b) for a, b in zip(disc_before, network.discriminator.parameters()))


def test_adversarial_warmup_ramps_the_students_weight_while_the_discriminator_trains():
    torch.manual_seed(0)
    network = MultiAD(Recipe.paper())
    disc_before = [p.clone() for p in network.discriminator.parameters()]
    trainer = _trainer(network, adversarial_weight=0.1, adversarial_warmup_iterations=3)
    seen = []

    def record(engine):
        output = engine.state.output
        seen.append(engine.student_adversarial_weight())
        if engine.state.iteration == 1:  # weight 0: the loss is the distillation alone
            assert output["loss"] == output[MultiADKeys.DISTILLATION_LOSS]
        assert MultiADKeys.DISCRIMINATOR_LOSS in output

    trainer.add_event_handler(Events.ITERATION_COMPLETED, record)
    trainer.run()
    assert seen == pytest.approx([0.0, 0.1 / 3, 0.2 / 3, 0.1])
    assert not all(torch.equal(a, b) for a, b in zip(disc_before, network.discriminator.parameters()))
    with pytest.raises(ValueError, match="adversarial_warmup_iterations"):
        _trainer(network, adversarial_weight=0.1, adversarial_warmup_iterations=-1)


@pytest.mark.slow
def test_distillation_loss_decreases():
    torch.manual_seed(0)
    network = MultiAD(Recipe.paper())
    trainer = _trainer(network, adversarial_weight=0.0)
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    trainer.state.max_epochs = 6
    trainer.run()
    assert losses[-1] < losses[0]


def test_evaluator_outputs_and_metrics():
    network = MultiAD(Recipe.paper())
    evaluator = MultiADEvaluator(
        device="cpu",
        val_data_loader=_loader(with_masks=True),
        network=network,
        key_val_metric={"image_auroc": ImageAUROC()},
        additional_metrics={"pixel_auroc": PixelAUROC()},
    )
    evaluator.run()
    output = evaluator.state.output
    assert output[MultiADKeys.ANOMALY_MAP].shape == (4, 1, 32, 32)
    assert output[MultiADKeys.PRED_SCORE].shape == (4,) and output[MultiADKeys.MASK].dtype == torch.bool
    assert 0.0 <= evaluator.state.metrics["image_auroc"] <= 1.0
    assert 0.0 <= evaluator.state.metrics["pixel_auroc"] <= 1.0


def test_trainer_rejects_missing_batch():
    trainer = _trainer(MultiAD(Recipe.paper()), 0.1)
    with pytest.raises(ValueError, match="batch data"):
        trainer._iteration(trainer, None)


def test_amp_uses_the_same_training_path():
    """AMP (bf16 autocast on CPU) runs the same iteration and still trains the student."""
    torch.manual_seed(0)
    network = MultiAD(Recipe.paper())
    before = [p.clone() for p in network.student.parameters()]
    trainer = _trainer(network, adversarial_weight=0.1, amp=True)
    trainer.run()
    assert torch.isfinite(trainer.state.output["loss"]) and MultiADKeys.DISCRIMINATOR_LOSS in trainer.state.output
    assert not all(torch.equal(a, b) for a, b in zip(before, network.student.parameters()))


def test_square_crop_takes_the_same_region_of_image_and_teacher_features():
    network = MultiAD(Recipe.paper(image_size=(32, 96)), pretrained_teacher=False).eval()
    images = torch.rand(2, 3, 32, 96)
    with torch.no_grad():
        features = network.teacher(images)
    generator = torch.Generator().manual_seed(3)
    crop, cropped = random_square_crop(images, features, generator)
    assert crop.shape == (2, 3, 32, 32)
    left = next(x for x in range(0, 65, 16) if torch.equal(images[..., x : x + 32], crop))  # an aligned offset
    for full, part in zip(features, cropped):
        stride = 32 // full.shape[-2]
        assert part.shape[-2:] == (32 // stride, 32 // stride)
        assert torch.equal(part, full[..., left // stride : (left + 32) // stride])
    square = torch.rand(2, 3, 32, 32)
    assert random_square_crop(square, None, generator)[0] is square  # square images are not cropped


def test_trainer_square_crops_train_on_long_images_with_cached_features():
    torch.manual_seed(0)
    network = MultiAD(Recipe.paper(image_size=(32, 96)), pretrained_teacher=False)
    items = [{"image": torch.rand(3, 32, 96)} for _ in range(4)]
    with torch.no_grad():
        for item in items:
            item["teacher_features"] = [f[0] for f in network.teacher(item["image"][None])]
    shapes = []
    network.student.register_forward_hook(lambda module, inputs, output: shapes.append(tuple(inputs[0].shape)))
    trainer = MultiADTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=DataLoader(items, batch_size=2),
        network=network,
        optimizer=torch.optim.Adam(network.student.parameters(), 1e-3),
        discriminator_optimizer=torch.optim.Adam(network.discriminator.parameters(), 1e-3),
        square_crops=True,
    )
    trainer.run()
    assert shapes == [(2, 3, 32, 32), (2, 3, 32, 32)]
    assert torch.isfinite(trainer.state.output["loss"])
