from __future__ import annotations

import numpy as np
import pytest
import torch

from multiad_monai.networks import TEACHERS, build_student, build_teacher, feature_channels
from multiad_monai.networks.encoders import _efficientnet, load_lite0_imagenet_state


def test_lite0_imagenet_weights_classify_a_cat():
    """The offline teacher really is ImageNet-trained: skimage's chelsea is a cat (classes 281-285)."""
    skimage_data = pytest.importorskip("skimage.data")
    from skimage.transform import resize

    net = _efficientnet(se=False)
    net.load_state_dict(load_lite0_imagenet_state(), strict=True)
    image = torch.tensor(resize(skimage_data.chelsea(), (224, 224)), dtype=torch.float32).permute(2, 0, 1)[None]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        probs = net.eval()((image - mean) / std).softmax(1)[0]
    assert 281 <= int(probs.argmax()) <= 285
    assert float(probs[281:286].sum()) > 0.7


@pytest.mark.parametrize("layers", [None, ["s1", "s2", "s4", "s6"], ["s2"]])
def test_teacher_and_student_share_feature_shapes(layers):
    teacher, student = build_teacher(layers=layers), build_student(layers=layers)
    x = torch.rand(2, 3, 64, 64)
    t, s = teacher(x), student(x)
    assert [f.shape for f in t] == [f.shape for f in s]
    assert [f.shape[1] for f in t] == feature_channels("efficientnet-lite0", layers)
    strides = {
        TEACHERS["efficientnet-lite0"]["strides"][TEACHERS["efficientnet-lite0"]["stages"].index(n)]
        for n in (layers or ["s1", "s2", "s4"])
    }
    assert {64 // f.shape[-1] for f in t} == strides


def test_teacher_is_frozen_and_student_has_se():
    teacher, student = build_teacher(), build_student()
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    assert all(p.requires_grad for p in student.parameters())
    se_blocks = [m for m in student.modules() if getattr(m, "has_se", False)]
    assert se_blocks and not [m for m in teacher.modules() if getattr(m, "has_se", False)]


def test_student_is_random_not_a_copy_of_the_teacher():
    teacher, student = build_teacher(), build_student()
    t_stem, s_stem = teacher.stem[1].weight, student.stem[1].weight
    assert t_stem.shape == s_stem.shape and not torch.allclose(t_stem, s_stem)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"name": "resnet18"}, ValueError, "unknown teacher"),
        ({"layers": ["s9"]}, ValueError, "layers must be"),
        ({"name": "seresnet50"}, RuntimeError, "teacher_weights"),
        ({"weights": "/nonexistent/lite0.pth"}, FileNotFoundError, "/nonexistent/lite0.pth"),
        ({"name": "seresnet50", "weights": "/nonexistent/se.pt"}, FileNotFoundError, "/nonexistent/se.pt"),
    ],
)
def test_teacher_errors_instead_of_random_weights(kwargs, error, match):
    with pytest.raises(error, match=match):
        build_teacher(**kwargs)


def test_seresnet50_teacher_from_local_file(tmp_path):
    from monai.networks.nets import SEResNet50

    path = str(tmp_path / "seresnet50.pt")
    reference = SEResNet50(spatial_dims=2, in_channels=3, num_classes=1000, pretrained=False)
    torch.save(reference.state_dict(), path)
    teacher = build_teacher("seresnet50", weights=path)
    assert torch.equal(teacher.stem.conv1.weight, reference.layer0.conv1.weight)
    features = teacher(torch.rand(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == [256, 512, 1024]


def test_lite0_rejects_a_foreign_state_dict(tmp_path):
    path = str(tmp_path / "other.pth")
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ValueError, match="not an EfficientNet-Lite0"):
        load_lite0_imagenet_state(path)


def test_features_are_deterministic_in_eval():
    teacher = build_teacher()
    x = torch.from_numpy(np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32))
    assert all(torch.equal(a, b) for a, b in zip(teacher(x), teacher(x)))
