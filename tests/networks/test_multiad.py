from __future__ import annotations

import pytest
import torch
from monai.data import DataLoader, Dataset

from multiad_monai.checkpoint import load_model
from multiad_monai.handlers import CalibrationHandler
from multiad_monai.networks import AnomalyOutput, DistillationFeatures, FeatureDiscriminator, MultiAD
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


def test_discriminator_logits():
    disc = FeatureDiscriminator(112)
    assert disc(torch.rand(4, 112, 8, 8)).shape == (4, 1)


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


def test_checkpoints_from_before_the_head_split_load_unchanged(tmp_path):
    """Map, prior and normaliser were one module: their buffers' old names load into the new parts."""
    torch.manual_seed(0)
    network = MultiAD(Recipe.paper(image_size=32, prior_weight=1.0, prior_reference="nearest", fusion="standardized"))
    normal = DataLoader([{"image": x} for x in torch.rand(6, 3, 32, 32)], batch_size=3)
    CalibrationHandler(network, normal, train_data_loader=normal)(None)
    old_names = {
        "prior.mean": "anomaly_map.prior_mean",
        "prior.bank": "anomaly_map.prior_bank",
        "prior.nearest": "anomaly_map.prior_nearest",
        "normalizer.scale_std": "anomaly_map.scale_std",
        "normalizer.fusion_stats": "anomaly_map.fusion_stats",
        "normalizer.": "",
    }
    state = {}
    for key, value in network.state_dict().items():
        new = next((new for new in old_names if key.startswith(new)), None)
        state[key if new is None else old_names[new] + key[len(new) :]] = value
    assert (
        "score_mean" in state and "anomaly_map.prior_bank0" in state and not any(k.startswith("prior.") for k in state)
    )
    torch.save(state, tmp_path / "old.pt")
    other = load_model(str(tmp_path / "old.pt"))
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(other(images).anomaly_map, network.eval()(images).anomaly_map)
    fresh = MultiAD(network.recipe, pretrained_teacher=False)
    fresh.load_state_dict(state)  # the module itself maps them too
    assert torch.equal(fresh.normalizer.score_mean, network.normalizer.score_mean)
