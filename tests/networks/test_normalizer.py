from __future__ import annotations

import pytest
import torch

from multiad_monai.networks import AnomalyMapGenerator, MultiAD, ScoreNormalizer, prior_gain
from multiad_monai.recipe import Recipe


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MultiAD(Recipe.paper(image_size=8))


def test_calibration_buffers_travel_in_the_state_dict(model, tmp_path):
    with pytest.raises(RuntimeError, match="not calibrated"):
        MultiAD(Recipe.paper()).normalize_score(torch.tensor([1.0]))
    scores = torch.tensor([1.0, 2.0, 3.0])
    model.normalizer.fit_thresholds(scores, torch.rand(3, 1, 8, 8))
    assert model.normalize_score(scores.mean()).item() == pytest.approx(0.0)
    assert model.normalize_score(model.image_threshold).item() == pytest.approx(0.5)
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    other = MultiAD(Recipe.paper(image_size=8))
    other.load_state_dict(torch.load(path, weights_only=True))
    assert other.is_calibrated and other.image_threshold.item() == pytest.approx(model.image_threshold.item())


def test_calibration_needs_two_images(model):
    with pytest.raises(ValueError, match="at least 2"):
        model.normalizer.fit_thresholds(torch.tensor([1.0]), torch.rand(1, 1, 4, 4))


@pytest.mark.parametrize("bad", ["scores", "maps"])
def test_calibration_refuses_non_finite_statistics(model, bad):
    scores, maps = torch.tensor([1.0, 2.0, 3.0]), torch.rand(3, 1, 8, 8)
    (scores if bad == "scores" else maps).view(-1)[1] = float("inf")
    with pytest.raises(ValueError, match="calibration statistics are not finite.*diverged"):
        model.normalizer.fit_thresholds(scores, maps)


def test_standardized_fusion_divides_each_student_scale_by_its_normal_std():
    torch.manual_seed(0)
    head, normalizer = AnomalyMapGenerator(sigma=0.0), ScoreNormalizer(num_scales=2, standardize_scales=True)
    teacher = [torch.rand(2, 8, 16, 16), torch.rand(2, 16, 8, 8)]
    student = [torch.rand(2, 8, 16, 16), torch.rand(2, 16, 8, 8)]
    scales = head.scale_maps(teacher, student, (32, 32))
    assert scales.shape == (2, 2, 1, 32, 32)
    with pytest.raises(RuntimeError, match="scales are not fitted"):
        normalizer.standardize(scales)
    normalizer.fit_scales(scales)
    stds = torch.stack([scales[0].std(), scales[1].std()])
    assert torch.allclose(normalizer.scale_std, stds)
    fused = head.fuse(normalizer.standardize(scales))
    assert torch.allclose(fused, (scales[0] / stds[0] + scales[1] / stds[1]) / 2, atol=1e-6)
    assert ScoreNormalizer().standardize(scales) is scales  # the paper's fusion: nothing to standardise


def test_prior_gain_rises_with_the_students_generalisation_gap():
    assert prior_gain(1.0) == prior_gain(0.9) == prior_gain(1.02) == 1.0  # a student that generalises keeps it
    assert prior_gain(1.07) == pytest.approx(8.5)
    assert prior_gain(1.12) == prior_gain(3.0) == 16.0


def test_adaptive_prior_weights_the_prior_up_when_the_student_memorised():
    torch.manual_seed(0)
    held_out, prior = torch.rand(2, 1, 8, 8) + 1, torch.rand(2, 1, 8, 8)
    normalizer = ScoreNormalizer(prior_weight=1.0, adaptive_prior=True)
    assert normalizer.fit_fusion(held_out, prior, held_out / 2) == 16.0  # twice the training distance: capped
    assert normalizer.fusion_stats[3].item() == pytest.approx(prior.std().item() / 16, rel=1e-5)
    assert normalizer.fit_fusion(held_out, prior, held_out) == 1.0
    with pytest.raises(ValueError, match="training images"):
        normalizer.fit_fusion(held_out, prior)
    fixed = ScoreNormalizer(prior_weight=1.0)
    assert fixed.fit_fusion(held_out, prior, held_out / 2) == 1.0


def test_combine_adds_the_standardised_maps_with_the_prior_weighted():
    student, prior = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    normalizer = ScoreNormalizer(prior_weight=0.5)
    with pytest.raises(RuntimeError, match="prior is not fitted"):
        normalizer.combine(student, prior)
    normalizer.fit_fusion(student, prior)
    expected = (student - student.mean()) / student.std() + 0.5 * (prior - prior.mean()) / prior.std()
    assert torch.allclose(normalizer.combine(student, prior), expected, atol=1e-5)
    assert ScoreNormalizer().combine(student, None) is student
