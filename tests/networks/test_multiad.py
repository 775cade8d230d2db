from __future__ import annotations

import pytest
import torch
from monai.data import DataLoader, Dataset

from multiad_monai.checkpoint import load_model
from multiad_monai.data import with_teacher_features
from multiad_monai.export import export_torchscript
from multiad_monai.handlers import CalibrationHandler
from multiad_monai.networks import (
    AnomalyMapGenerator,
    AnomalyOutput,
    DistillationFeatures,
    FeatureDiscriminator,
    MultiAD,
    nearest_distance,
    prior_gain,
)
from multiad_monai.networks.anomaly_map import NEAREST_RATIO
from multiad_monai.recipe import Recipe


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MultiAD(Recipe.paper(image_size=8))


def test_training_forward_returns_features_and_keeps_teacher_in_eval(model):
    model.train()
    out = model(torch.rand(2, 3, 64, 64))
    assert isinstance(out, DistillationFeatures)
    assert not model.teacher.training and model.student.training
    assert not any(f.requires_grad for f in out.teacher) and all(f.requires_grad for f in out.student)


def test_eval_forward_returns_map_and_score(model):
    model.eval()
    out = model(torch.rand(3, 3, 64, 48))
    assert isinstance(out, AnomalyOutput)
    assert out.anomaly_map.shape == (3, 1, 64, 48) and out.pred_score.shape == (3,)
    assert torch.allclose(out.pred_score, out.anomaly_map.flatten(1).amax(1))


def test_calibration_buffers_travel_in_the_state_dict(model, tmp_path):
    with pytest.raises(RuntimeError, match="not calibrated"):
        MultiAD(Recipe.paper()).normalize_score(torch.tensor([1.0]))
    scores = torch.tensor([1.0, 2.0, 3.0])
    model.calibrate(scores, torch.rand(3, 1, 8, 8))
    assert model.normalize_score(scores.mean()).item() == pytest.approx(0.0)
    assert model.normalize_score(model.image_threshold).item() == pytest.approx(0.5)
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    other = MultiAD(Recipe.paper(image_size=8))
    other.load_state_dict(torch.load(path, weights_only=True))
    assert other.is_calibrated and other.image_threshold.item() == pytest.approx(model.image_threshold.item())


def test_calibration_needs_two_images(model):
    with pytest.raises(ValueError, match="at least 2"):
        model.calibrate(torch.tensor([1.0]), torch.rand(1, 1, 4, 4))


@pytest.mark.parametrize("bad", ["scores", "maps"])
def test_calibration_refuses_non_finite_statistics(model, bad):
    scores, maps = torch.tensor([1.0, 2.0, 3.0]), torch.rand(3, 1, 8, 8)
    (scores if bad == "scores" else maps).view(-1)[1] = float("inf")
    with pytest.raises(ValueError, match="calibration statistics are not finite.*diverged"):
        model.calibrate(scores, maps)


def test_discriminator_logits():
    disc = FeatureDiscriminator(112)
    assert disc(torch.rand(4, 112, 8, 8)).shape == (4, 1)


@pytest.mark.parametrize("fusion", ["sum", "product"])
@pytest.mark.parametrize("score", ["max", "topk"])
def test_anomaly_map_is_zero_when_student_matches(fusion, score):
    head = AnomalyMapGenerator(fusion=fusion, sigma=2.0, score=score)
    features = [torch.rand(2, 8, 16, 16), torch.rand(2, 16, 8, 8)]
    anomaly_map, pred_score = head(features, [f.clone() for f in features], (32, 32))
    assert anomaly_map.shape == (2, 1, 32, 32)
    assert anomaly_map.abs().max() < 1e-5 and pred_score.abs().max() < 1e-5


def test_anomaly_map_localises_a_disagreement():
    head = AnomalyMapGenerator(sigma=1.0)
    teacher = [torch.ones(1, 4, 16, 16)]
    student = [torch.ones(1, 4, 16, 16)]
    student[0][:, :, 4:6, 10:12] = -1.0
    anomaly_map, score = head(teacher, student, (32, 32))
    peak = divmod(int(anomaly_map.flatten().argmax()), 32)
    assert 8 <= peak[0] <= 12 and 20 <= peak[1] <= 24 and score.item() > 1.0


def test_standardized_fusion_divides_each_student_scale_by_its_normal_std():
    torch.manual_seed(0)
    head = AnomalyMapGenerator(fusion="standardized", sigma=0.0, num_scales=2)
    teacher = [torch.rand(2, 8, 16, 16), torch.rand(2, 16, 8, 8)]
    student = [torch.rand(2, 8, 16, 16), torch.rand(2, 16, 8, 8)]
    assert not head.is_fitted
    with pytest.raises(RuntimeError, match="scales are not fitted"):
        head(teacher, student, (32, 32))
    scales = head.scale_maps(teacher, student, (32, 32))
    assert scales.shape == (2, 2, 1, 32, 32)
    head.fit_scales(scales)
    stds = torch.stack([scales[0].std(), scales[1].std()])
    assert head.is_fitted and torch.allclose(head.scale_std, stds)
    anomaly_map, _ = head(teacher, student, (32, 32))
    assert torch.allclose(anomaly_map, (scales[0] / stds[0] + scales[1] / stds[1]) / 2, atol=1e-6)


def test_standardized_fusion_is_calibrated_and_travels_with_the_model(tmp_path):
    torch.manual_seed(0)
    network = MultiAD(Recipe.paper(image_size=32, prior_weight=1.0, adaptive_prior=True, fusion="standardized"))
    normal = torch.rand(6, 3, 32, 32)
    loader = DataLoader([{"image": x} for x in normal], batch_size=3)
    CalibrationHandler(network, loader, train_data_loader=loader)(None)
    head = network.eval().anomaly_map
    assert head.is_fitted and network.is_calibrated and (head.scale_std > 0).all() and len(head.scale_std) == 3
    with torch.no_grad():
        out = network(normal)
    path = tmp_path / "model.pt"
    torch.save(network.state_dict(), path)
    other = MultiAD(
        Recipe.paper(image_size=32, prior_weight=1.0, adaptive_prior=True, fusion="standardized"),
        pretrained_teacher=False,
    )
    other.load_state_dict(torch.load(path, weights_only=True))
    with torch.no_grad():
        assert torch.allclose(other.eval()(normal).pred_score, out.pred_score)


@pytest.mark.parametrize("kwargs", [{"fusion": "mean"}, {"score": "median"}, {"topk_ratio": 0.0}])
def test_anomaly_map_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        AnomalyMapGenerator(**kwargs)


def test_student_eval_features_follow_training():
    """After a short training run and calibration, eval-mode (running-stat) student features match the
    train-mode ones the student was trained to produce: the anomaly map is computed in eval mode."""
    torch.manual_seed(0)
    network = MultiAD(Recipe.paper(image_size=32))
    optimizer = torch.optim.Adam(network.student.parameters(), 1e-3)
    images = torch.rand(8, 3, 32, 32)
    network.train()
    for _ in range(30):
        features = network(images)
        loss = sum((1 - torch.nn.functional.cosine_similarity(t, s)).mean() for t, s in zip(*features))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        train_features = network.student(images)
    CalibrationHandler(network, [{"image": images}], train_data_loader=[{"image": images}])(None)
    with torch.no_grad():
        eval_features = network.eval().student(images)
    for a, b in zip(train_features, eval_features):
        assert torch.nn.functional.cosine_similarity(a, b).mean() > 0.99


@pytest.mark.parametrize("adaptive_prior", [False, True])
def test_teacher_prior_is_fitted_from_cached_teacher_features(adaptive_prior):
    torch.manual_seed(0)
    network = MultiAD(Recipe.paper(image_size=32, prior_weight=1.0, adaptive_prior=adaptive_prior))
    normal = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        teacher = network.eval().teacher(normal)
    cached = DataLoader(with_teacher_features(Dataset([{"image": x} for x in normal]), network.teacher), batch_size=2)
    calls = []
    network.teacher.register_forward_hook(lambda *_: calls.append(1))
    CalibrationHandler(network, [{"image": normal[:2]}], train_data_loader=cached)(None)
    assert len(calls) == 1  # the held-out batch only: the training images' features came from the cache
    expected = [t.mean(0, keepdim=True) for t in teacher]
    assert all(torch.allclose(m.float(), e, atol=1e-5) for m, e in zip(network.anomaly_map.prior_means, expected))


def test_teacher_prior_is_the_baseline_map_and_travels_with_the_model(tmp_path):
    torch.manual_seed(0)
    network = MultiAD(Recipe.paper(image_size=32, prior_weight=1.0))
    normal = torch.rand(6, 3, 32, 32)
    loader = DataLoader([{"image": x} for x in normal], batch_size=3)
    network.eval()
    with pytest.raises(RuntimeError, match="prior is not fitted"):
        network(normal[:1])
    CalibrationHandler(network, loader, train_data_loader=loader)(None)
    head = network.anomaly_map
    assert head.is_fitted and network.is_calibrated
    with torch.no_grad():
        teacher = network.teacher(normal)
        # the prior is the distance to the mean normal teacher feature at each location (the baseline's map)
        expected = [t.mean(0, keepdim=True) for t in teacher]
        assert all(torch.allclose(m.float(), e, atol=1e-5) for m, e in zip(head.prior_means, expected))
        student_map, prior_map = head.component_maps(teacher, network.student(normal), (32, 32))
        assert torch.allclose(prior_map, head.distance_map(teacher, expected, (32, 32)), atol=1e-5)
        # both components are standardised on the held-out normal images before they are added
        s_mean, s_std, p_mean, p_std = head.fusion_stats
        assert s_mean == pytest.approx(student_map.mean().item(), rel=1e-4)
        assert p_std == pytest.approx(prior_map.std().item(), rel=1e-4)
        out = network(normal)
    path = tmp_path / "model.pt"
    torch.save(network.state_dict(), path)
    other = MultiAD(Recipe.paper(image_size=32, prior_weight=1.0), pretrained_teacher=False)
    other.load_state_dict(torch.load(path, weights_only=True))
    other.eval()
    with torch.no_grad():
        assert torch.allclose(other(normal).pred_score, out.pred_score)
    with pytest.raises(ValueError, match="prior_weight: network 0.0, checkpoint 1.0"):
        MultiAD(Recipe.paper(image_size=32)).load_state_dict(torch.load(path, weights_only=True))


def test_teacher_prior_uses_every_training_image():
    torch.manual_seed(0)
    network = MultiAD(Recipe.paper(image_size=32, prior_weight=1.0))
    normal = torch.rand(7, 3, 32, 32)
    loader = DataLoader([{"image": x} for x in normal], batch_size=3)  # 3 + 3 + a short batch of 1
    CalibrationHandler(network, loader, train_data_loader=loader)(None)
    with torch.no_grad():
        expected = [t.mean(0, keepdim=True) for t in network.teacher(normal)]
    assert all(torch.allclose(m.float(), e, atol=1e-5) for m, e in zip(network.anomaly_map.prior_means, expected))


def test_nearest_distance_searches_the_bank_at_and_next_to_each_location():
    torch.manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(5, 8, 6, 6), dim=1)
    assert torch.allclose(nearest_distance(bank[2:3] * 3.0, bank), torch.zeros(1, 1, 6, 6), atol=1e-5)
    shifted = torch.roll(bank[2:3], shifts=1, dims=3)  # the same image one location to the right
    inner = (..., slice(None), slice(1, 5))  # away from the wrapped-around border column
    assert nearest_distance(shifted, bank)[inner].abs().max() < 1e-5
    assert nearest_distance(shifted, bank, radius=0)[inner].min() > 0.1
    twice = torch.roll(bank[2:3], shifts=2, dims=3)
    assert nearest_distance(twice, bank)[..., 2:4].min() > 0.1  # two locations away is out of reach


def test_nearest_prior_keeps_a_bank_of_the_training_images_and_travels_with_the_model(tmp_path):
    torch.manual_seed(0)
    network = MultiAD(Recipe.paper(image_size=32, prior_weight=1.0, prior_reference="nearest"))
    normal = torch.rand(7, 3, 32, 32)
    train = DataLoader([{"image": x} for x in normal[:5]], batch_size=2)
    network.eval()
    with pytest.raises(RuntimeError, match="prior is not fitted"):
        network(normal[:1])
    CalibrationHandler(network, DataLoader([{"image": x} for x in normal[5:]], batch_size=2), train)(None)
    head = network.anomaly_map
    assert head.is_fitted and head.uses_nearest and [len(b) for b in head.prior_banks] == [5, 5, 5]
    with torch.no_grad():
        teacher = network.teacher(normal)
        prior = head.prior_map([t[:5] for t in teacher], (32, 32))
        assert prior.abs().max() < 1e-2  # each training image is in the bank (stored in half precision)
        out = network(normal)
    path = tmp_path / "model.pt"
    torch.save(network.state_dict(), path)
    other = load_model(str(path))  # a fresh network has an empty bank: the stored one sets its size
    assert other.recipe.prior_reference == "nearest" and [len(b) for b in other.anomaly_map.prior_banks] == [5, 5, 5]
    with torch.no_grad():
        assert torch.allclose(other(normal).pred_score, out.pred_score)
    export_torchscript(other, str(tmp_path / "model.ts"))  # the search traces into the exported model
    assert torch.allclose(torch.jit.load(str(tmp_path / "model.ts"))(normal)[1], out.pred_score, atol=1e-5)


def _scene(count: int, texture: bool) -> torch.Tensor:
    """Images of two layouts (a bright square left or right, like anatomy at two slice levels) with a little noise,
    or noise."""
    images = torch.rand(count, 3, 64, 64)
    if not texture:
        images = 0.02 * images + 0.45
        images[0::2, :, 8:24, 8:24] = 0.95
        images[1::2, :, 36:56, 40:56] = 0.05
    return images


@pytest.mark.parametrize("texture", [False, True])
def test_auto_prior_reference_takes_the_nearest_neighbour_where_normal_images_differ_by_place(texture):
    torch.manual_seed(0)
    network = MultiAD(Recipe.paper(image_size=64, prior_weight=1.0, prior_reference="auto")).eval()
    train, held_out = (DataLoader([{"image": x} for x in _scene(n, texture)], batch_size=4) for n in (8, 4))
    head = network.anomaly_map
    with torch.no_grad():
        head.fit_prior(network.teacher(b["image"]) for b in train)
        ratio = head.fit_reference(network.teacher(b["image"]) for b in held_out)
    assert (ratio < NEAREST_RATIO) is not texture and head.uses_nearest is not texture
    assert [len(b) for b in head.prior_banks] == ([0, 0, 0] if texture else [8, 8, 8])  # no bank for the mean
    if texture:  # the bank went with the choice: choosing again needs a new fit
        with pytest.raises(ValueError, match="fit_prior"):
            head.fit_reference(network.teacher(b["image"]) for b in held_out)
    CalibrationHandler(network, held_out, train)(None)  # calibration makes the same choice
    assert head.is_fitted and head.uses_nearest is not texture


def test_prior_reference_must_be_known():
    with pytest.raises(ValueError, match="prior_reference"):
        MultiAD(Recipe.paper(image_size=8, prior_weight=1.0, prior_reference="median"))


def test_prior_gain_rises_with_the_students_generalisation_gap():
    assert prior_gain(1.0) == prior_gain(0.9) == prior_gain(1.02) == 1.0  # a student that generalises keeps it
    assert prior_gain(1.07) == pytest.approx(8.5)
    assert prior_gain(1.12) == prior_gain(3.0) == 16.0


def test_adaptive_prior_weights_the_prior_up_when_the_student_memorised():
    torch.manual_seed(0)
    held_out, prior = torch.rand(2, 1, 8, 8) + 1, torch.rand(2, 1, 8, 8)
    head = AnomalyMapGenerator(prior_shapes=[(4, 2, 2)], adaptive_prior=True)
    assert head.fit_fusion(held_out, prior, held_out / 2) == 16.0  # twice the training distance: gain capped at 16
    assert head.fusion_stats[3].item() == pytest.approx(prior.std().item() / 16, rel=1e-5)
    assert head.fit_fusion(held_out, prior, held_out) == 1.0
    with pytest.raises(ValueError, match="training images"):
        head.fit_fusion(held_out, prior)
    fixed = AnomalyMapGenerator(prior_shapes=[(4, 2, 2)])
    assert fixed.fit_fusion(held_out, prior, held_out / 2) == 1.0


def test_prior_weight_must_not_be_negative():
    with pytest.raises(ValueError, match="prior_weight"):
        MultiAD(Recipe.paper(image_size=8, prior_weight=-1))


def test_cached_teacher_features_replace_the_teacher_in_training():
    from multiad_monai.data import with_teacher_features
    from multiad_monai.engines import MultiADTrainer

    torch.manual_seed(0)
    network = MultiAD(Recipe.paper(image_size=32))
    images = [{"image": torch.rand(3, 32, 32)} for _ in range(4)]
    cached = with_teacher_features(Dataset(images), network.teacher)  # the teacher runs here, once per image
    calls = []
    network.teacher.register_forward_hook(lambda *_: calls.append(1))
    optimizers = [torch.optim.Adam(m.parameters()) for m in (network.student, network.discriminator)]
    trainer = MultiADTrainer("cpu", 2, DataLoader(cached, batch_size=2), network, *optimizers)
    trainer.run()
    assert trainer.state.iteration == 4 and not calls
    with torch.no_grad():
        expected = network.teacher(images[1]["image"][None])
    assert all(torch.allclose(c, e[0], atol=1e-5) for c, e in zip(cached[1]["teacher_features"], expected))
