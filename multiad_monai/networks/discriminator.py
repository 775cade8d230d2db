"""Discriminator on the deepest feature maps: teacher features are "real", student features "fake"."""

from __future__ import annotations

from monai.networks.blocks import Convolution
from torch import nn

__all__ = ["FeatureDiscriminator"]


class FeatureDiscriminator(nn.Module):
    """Conv-BN-LeakyReLU stack, global average pooling and a linear logit.

    Args:
        in_channels: channels of the feature map it judges.
        channels: output channels of each conv block; every block after the first halves the resolution.
    """

    def __init__(self, in_channels: int, channels: tuple[int, ...] = (128, 128)) -> None:
        super().__init__()
        blocks = []
        for i, out_channels in enumerate(channels):
            blocks.append(
                Convolution(
                    spatial_dims=2,
                    in_channels=in_channels,
                    out_channels=out_channels,
                    strides=1 if i == 0 else 2,
                    kernel_size=3,
                    act=("leakyrelu", {"negative_slope": 0.2, "inplace": True}),
                    norm="batch",
                )
            )
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, 1))

    def forward(self, x):
        """
        Args:
            x: features ``(N, C, h, w)``.

        Returns:
            logits ``(N, 1)``; positive means "looks like the teacher".
        """
        return self.head(self.features(x))
