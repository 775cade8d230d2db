from __future__ import annotations

import pytest
import torch

from multiad_monai.networks import AnomalyMapGenerator, cosine_distance


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


def test_anomaly_map_is_the_papers_fused_smoothed_cosine_distance():
    torch.manual_seed(0)
    teacher = [torch.rand(2, 8, 16, 16), torch.rand(2, 16, 8, 8)]
    student = [torch.rand(2, 8, 16, 16), torch.rand(2, 16, 8, 8)]
    up = [
        torch.nn.functional.interpolate(cosine_distance(t, s), size=(32, 32), mode="bilinear")
        for t, s in zip(teacher, student)
    ]
    for fusion, expected in (("sum", (up[0] + up[1]) / 2), ("product", up[0] * up[1])):
        anomaly_map, score = AnomalyMapGenerator(fusion=fusion, sigma=0.0)(teacher, student, (32, 32))
        assert torch.allclose(anomaly_map, expected, atol=1e-6) and torch.allclose(score, expected.flatten(1).amax(1))
    _, topk = AnomalyMapGenerator(sigma=0.0, score="topk", topk_ratio=0.25)(teacher, student, (32, 32))
    expected = ((up[0] + up[1]) / 2).flatten(1).topk(256, dim=1).values.mean(1)
    assert torch.allclose(topk, expected, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs", [{"fusion": "mean"}, {"fusion": "standardized"}, {"score": "median"}, {"topk_ratio": 0.0}]
)
def test_anomaly_map_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        AnomalyMapGenerator(**kwargs)
