from __future__ import annotations

import copy

import pytest
import torch
from ignite.engine import Engine, Events

from multiad_monai.handlers import HeldOutStopping
from multiad_monai.networks import MultiAD
from multiad_monai.recipe import Recipe
from multiad_monai.stopping import student_distance


def _network(**recipe) -> MultiAD:
    torch.manual_seed(0)
    return MultiAD(Recipe.paper(image_size=32, **recipe), pretrained_teacher=False)


def _batches(images: torch.Tensor, size: int = 2) -> list[dict]:
    return [{"image": x} for x in images.split(size)]


def _trainer(network: MultiAD, images: torch.Tensor, lr: float) -> Engine:
    optimizer = torch.optim.Adam(network.student.parameters(), lr)

    def step(engine, batch):
        network.train()
        teacher, student = network(batch["image"])
        loss = sum((1 - torch.nn.functional.cosine_similarity(t, s)).mean() for t, s in zip(teacher, student))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach()}

    return Engine(step)


def test_student_distance_uses_batch_statistics_and_changes_nothing():
    """The mean cosine distance over scales with each batch's own batch-norm statistics (as calibration will see
    the student), without stochastic depth; the mode and the running statistics stay as they were."""
    network = _network()
    images = torch.rand(4, 3, 32, 32)
    network.train()
    before = copy.deepcopy(network.student.state_dict())
    distance = student_distance(network, _batches(images, size=4))
    assert network.training and network.student.training
    for key, value in network.student.state_dict().items():
        assert torch.equal(value, before[key]), key
    reference = copy.deepcopy(network).eval()
    for module in reference.student.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.train()
    with torch.no_grad():
        teacher, student = reference.teacher(images), reference.student(images)
    per_scale = [(1 - torch.nn.functional.cosine_similarity(t, s)).mean() for t, s in zip(teacher, student)]
    assert distance == pytest.approx(float(torch.stack(per_scale).mean()), rel=1e-5)
    assert student_distance(network, _batches(images), max_images=2) == pytest.approx(
        student_distance(network, _batches(images[:2])), rel=1e-6
    )
    with pytest.raises(ValueError, match="no images"):
        student_distance(network, [])


def test_stops_when_the_held_out_distance_levels_off():
    """A student that does not learn (learning rate 0) stops after ``patience`` checks; the budget is not used."""
    network = _network()
    images = torch.rand(8, 3, 32, 32)
    trainer = _trainer(network, images, lr=0.0)
    stopping = HeldOutStopping(network, _batches(images[:2]), _batches(images[2:]), interval=1, patience=2)
    stopping.attach(trainer)
    trainer.run(_batches(images[2:]), max_epochs=50)
    # the first check sets the best distance, two more without improvement fire the rule; 1 iteration cools down
    assert trainer.state.iteration == 4 and "held-out distance" in stopping.reason
    assert {"held_out_distance", "generalisation_gap"} <= set(trainer.state.metrics)


def test_keeps_training_while_the_held_out_distance_falls():
    network = _network()
    images = torch.rand(8, 3, 32, 32)
    trainer = _trainer(network, images, lr=1e-2)
    # held-out images the same as the first training ones: no generalisation gap, the plateau rule alone
    stopping = HeldOutStopping(
        network, _batches(images[2:4]), _batches(images[2:]), interval=3, patience=1, min_delta=0.0
    )
    stopping.attach(trainer)
    distances = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED(every=3), lambda e: distances.append(e.state.metrics["held_out_distance"])
    )
    trainer.run(_batches(images[2:]), max_epochs=2)  # 6 iterations, 2 checks
    assert trainer.state.iteration == 6 and len(distances) == 2 and distances[1] < distances[0]
    assert stopping.reason is None


def test_stops_when_the_student_starts_to_memorise():
    """Training images the student fits, held-out images unlike them: the gap opens beyond the prior's noise."""
    network = _network()
    train = torch.rand(4, 3, 32, 32) * 0.2
    held_out = torch.rand(2, 3, 32, 32).roll(16, dims=-1) ** 4
    trainer = _trainer(network, train, lr=1e-2)
    stopping = HeldOutStopping(network, _batches(held_out), _batches(train), interval=1, patience=1000)
    stopping.attach(trainer)
    trainer.run(_batches(train), max_epochs=100)
    assert trainer.state.iteration < 200 and "starts to memorise" in stopping.reason
    assert trainer.state.metrics["generalisation_gap"] > 1.02
    assert stopping.baseline_gap is not None  # measured on the untrained student, at the start
    assert stopping.memorises and trainer.state.student_memorises  # calibration gives the prior its full gain


def test_cool_down_anneals_the_learning_rate_before_stopping():
    """When the rule fires, training goes on for a quarter of the iterations so far with the learning rate
    falling to 0 (the factor of a LambdaLR), then ends."""
    network = _network()
    images = torch.rand(8, 3, 32, 32)
    trainer = _trainer(network, images, lr=0.0)
    stopping = HeldOutStopping(network, _batches(images[:2]), _batches(images[2:]), interval=4, patience=1)
    stopping.attach(trainer)
    trainer.run(_batches(images[2:]), max_epochs=50)  # 3 iterations per epoch
    # checks at 4 (the best) and 8 (no improvement: the rule fires), then 2 iterations of cool-down
    assert stopping.decided_at == 8 and stopping.cooldown_iterations == 2 and trainer.state.iteration == 10
    factors = [stopping.lr_factor(step) for step in (7, 8, 9, 10)]
    assert factors[:2] == [1.0, 1.0] and 0.0 < factors[2] < 1.0 and factors[3] == pytest.approx(0.0, abs=1e-12)


def test_state_travels_with_the_checkpoint():
    network = _network()
    images = torch.rand(4, 3, 32, 32)
    trainer = _trainer(network, images, lr=0.0)
    stopping = HeldOutStopping(network, _batches(images[:2]), _batches(images[2:]), patience=5)
    stopping.attach(trainer)
    trainer.run(_batches(images), max_epochs=2)
    other = HeldOutStopping(network, _batches(images[:2]), _batches(images[2:]), patience=5)
    other.load_state_dict(stopping.state_dict())
    assert other.checks_without_improvement == stopping.checks_without_improvement == 3
    assert other.best_distance == stopping.best_distance and other.baseline_gap == stopping.baseline_gap


def test_refuses_bad_settings():
    for bad in ({"patience": 0}, {"interval": 0}, {"min_delta": 1.0}, {"cooldown": -0.5}):
        with pytest.raises(ValueError, match="patience"):
            HeldOutStopping(_network(), [], [], **bad)
