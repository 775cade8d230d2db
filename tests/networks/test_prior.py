from __future__ import annotations

import pytest
import torch
from monai.data import DataLoader

from multiad_monai.checkpoint import load_model
from multiad_monai.export import export_torchscript
from multiad_monai.handlers import CalibrationHandler
from multiad_monai.networks import MultiAD, TeacherPrior, nearest_distance
from multiad_monai.networks.prior import NEAREST_RATIO
from multiad_monai.recipe import Recipe


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


def test_mean_prior_is_the_distance_to_the_mean_normal_feature():
    torch.manual_seed(0)
    prior = TeacherPrior([(8, 4, 4), (16, 2, 2)])
    normal = [[torch.rand(3, 8, 4, 4), torch.rand(3, 16, 2, 2)] for _ in range(2)]
    with pytest.raises(RuntimeError, match="prior is not fitted"):
        prior(normal[0], (8, 8))
    prior.fit(normal)
    means = [torch.cat(scale).mean(0, keepdim=True) for scale in zip(*normal)]
    assert all(torch.allclose(m, e, atol=1e-6) for m, e in zip(prior.means, means))
    assert not prior.banks and prior.is_fitted and not prior.uses_nearest
    test = [torch.rand(2, 8, 4, 4), torch.rand(2, 16, 2, 2)]
    distances = prior(test, (8, 8))
    assert distances.shape == (2, 2, 1, 8, 8)
    expected = 1 - torch.nn.functional.cosine_similarity(test[1], means[1], dim=1)[:, None]
    assert torch.allclose(distances[1], torch.nn.functional.interpolate(expected, size=(8, 8), mode="bilinear"))


def test_prior_reference_must_be_known():
    with pytest.raises(ValueError, match="prior_reference"):
        MultiAD(Recipe.paper(image_size=8, prior_weight=1.0, prior_reference="median"))
    assert (
        MultiAD(Recipe.paper(image_size=8)).prior is None
    )  # prior_weight 0: the paper's student-only map, no prior at all


def test_teacher_prior_uses_every_training_image():
    torch.manual_seed(0)
    network = MultiAD(Recipe.paper(image_size=32, prior_weight=1.0))
    normal = torch.rand(7, 3, 32, 32)
    loader = DataLoader([{"image": x} for x in normal], batch_size=3)  # 3 + 3 + a short batch of 1
    CalibrationHandler(network, loader, train_data_loader=loader)(None)
    with torch.no_grad():
        expected = [t.mean(0, keepdim=True) for t in network.teacher(normal)]
    assert all(torch.allclose(m.float(), e, atol=1e-5) for m, e in zip(network.prior.means, expected))


def test_nearest_prior_keeps_a_bank_of_the_training_images_and_travels_with_the_model(tmp_path):
    torch.manual_seed(0)
    network = MultiAD(Recipe.paper(image_size=32, prior_weight=1.0, prior_reference="nearest"))
    normal = torch.rand(7, 3, 32, 32)
    train = DataLoader([{"image": x} for x in normal[:5]], batch_size=2)
    network.eval()
    with pytest.raises(RuntimeError, match="prior is not fitted"):
        network(normal[:1])
    CalibrationHandler(network, DataLoader([{"image": x} for x in normal[5:]], batch_size=2), train)(None)
    prior = network.prior
    assert prior.is_fitted and prior.uses_nearest and [len(b) for b in prior.banks] == [5, 5, 5]
    with torch.no_grad():
        teacher = network.teacher(normal)
        distances = network.prior_map([t[:5] for t in teacher], (32, 32))
        assert distances.abs().max() < 1e-2  # each training image is in the bank (stored in half precision)
        out = network(normal)
    path = tmp_path / "model.pt"
    torch.save(network.state_dict(), path)
    other = load_model(str(path))  # a fresh network has an empty bank: the stored one sets its size
    assert other.recipe.prior_reference == "nearest" and [len(b) for b in other.prior.banks] == [5, 5, 5]
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
    prior = network.prior
    with torch.no_grad():
        prior.fit(network.teacher(b["image"]) for b in train)
        ratio = prior.fit_reference(network.teacher(b["image"]) for b in held_out)
    assert (ratio < NEAREST_RATIO) is not texture and prior.uses_nearest is not texture
    assert [len(b) for b in prior.banks] == ([0, 0, 0] if texture else [8, 8, 8])  # no bank for the mean
    if texture:  # the bank went with the choice: choosing again needs a new fit
        with pytest.raises(ValueError, match="fit the prior"):
            prior.fit_reference(network.teacher(b["image"]) for b in held_out)
    CalibrationHandler(network, held_out, train)(None)  # calibration makes the same choice
    assert prior.is_fitted and prior.uses_nearest is not texture
