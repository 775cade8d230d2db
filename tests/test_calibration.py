from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from monai.data import DataLoader, Dataset

from multiad_monai.calibration import calibrate
from multiad_monai.data import with_teacher_features
from multiad_monai.handlers import CalibrationHandler
from multiad_monai.networks import MultiAD
from multiad_monai.networks.normalizer import prior_gain
from multiad_monai.recipe import Recipe


def test_standardized_fusion_is_calibrated_and_travels_with_the_model(tmp_path):
    torch.manual_seed(0)
    network = MultiAD(Recipe.paper(image_size=32, prior_weight=1.0, adaptive_prior=True, fusion="standardized"))
    normal = torch.rand(6, 3, 32, 32)
    loader = DataLoader([{"image": x} for x in normal], batch_size=3)
    CalibrationHandler(network, loader, train_data_loader=loader)(None)
    scale_std = network.eval().normalizer.scale_std
    assert network.is_calibrated and (scale_std > 0).all() and len(scale_std) == 3
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
    assert all(torch.allclose(m.float(), e, atol=1e-5) for m, e in zip(network.prior.means, expected))


def test_teacher_prior_is_the_baseline_map_and_travels_with_the_model(tmp_path):
    torch.manual_seed(0)
    network = MultiAD(Recipe.paper(image_size=32, prior_weight=1.0))
    normal = torch.rand(6, 3, 32, 32)
    loader = DataLoader([{"image": x} for x in normal], batch_size=3)
    network.eval()
    with pytest.raises(RuntimeError, match="prior is not fitted"):
        network(normal[:1])
    CalibrationHandler(network, loader, train_data_loader=loader)(None)
    assert network.prior.is_fitted and network.is_calibrated
    with torch.no_grad():
        teacher = network.teacher(normal)
        # the prior is the distance to the mean normal teacher feature at each location (the baseline's map)
        expected = [t.mean(0, keepdim=True) for t in teacher]
        assert all(torch.allclose(m.float(), e, atol=1e-5) for m, e in zip(network.prior.means, expected))
        head = network.anomaly_map
        student_map = network.student_map(head.scale_maps(teacher, network.student(normal), (32, 32)))
        prior_map = network.prior_map(teacher, (32, 32))
        assert torch.allclose(prior_map, head.fuse(head.scale_maps(teacher, expected, (32, 32))), atol=1e-5)
        # both components are standardised on the held-out normal images before they are added
        s_mean, s_std, p_mean, p_std = network.normalizer.fusion_stats
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


def test_calibrate_fits_every_part_in_order_and_reports_its_choices():
    torch.manual_seed(0)
    network = MultiAD(Recipe.paper(image_size=32, prior_weight=1.0, prior_reference="auto", adaptive_prior=True))
    normal = DataLoader([{"image": x} for x in torch.rand(6, 3, 32, 32)], batch_size=3)
    with pytest.raises(ValueError, match="needs the training images"):
        calibrate(network, normal)
    result = calibrate(network, normal, normal)
    # held out = trained on here: the bank holds the very images, so the nearest neighbour wins
    assert result.images == 6 and abs(result.reference_ratio) < 1e-3 and result.prior_gain >= 1.0
    assert network.prior.uses_nearest and network.is_calibrated
    # the thresholds are those of the final maps on the held-out images
    with torch.no_grad():
        scores = torch.cat([network(b["image"]).pred_score for b in normal])
    assert network.normalizer.score_mean.item() == pytest.approx(scores.mean().item(), rel=1e-5)
    plain = MultiAD(Recipe.paper(image_size=32))
    assert calibrate(plain, normal) == (6, None, None) and plain.is_calibrated


def test_calibration_maps_must_have_the_recipes_size():
    network = MultiAD(Recipe.paper(image_size=32))
    with pytest.raises(ValueError, match="calibration maps are \\(16, 16\\), the recipe's image_size is \\(32, 32\\)"):
        calibrate(network, [{"image": torch.rand(2, 3, 16, 16)}])


def test_a_student_that_memorises_gives_the_adaptive_prior_its_full_gain():
    """When the held-out rule stopped training because the student started to memorise, the trainer's state says
    so and calibration weights the prior at the cap instead of by the (still small) measured gap."""
    torch.manual_seed(0)
    recipe = Recipe.paper(image_size=32, prior_weight=1.0, adaptive_prior=True)
    network = MultiAD(recipe, pretrained_teacher=False)
    normal = torch.rand(6, 3, 32, 32)
    loader = DataLoader([{"image": x} for x in normal], batch_size=3)
    measured_gain = calibrate(network, loader, loader).prior_gain
    measured = float(network.normalizer.fusion_stats[3])  # the prior's std over its gain
    trainer = SimpleNamespace(state=SimpleNamespace(student_memorises=True))
    CalibrationHandler(network, loader, train_data_loader=loader)(trainer)
    full = prior_gain(float("inf"))
    assert full == 16.0
    assert float(network.normalizer.fusion_stats[3]) * full == pytest.approx(measured * measured_gain, rel=1e-5)
