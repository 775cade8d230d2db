"""Discriminator on the deepest feature maps: teacher features are "real", student features "fake"."""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

__all__ = ["FeatureDiscriminator"]


class FeatureDiscriminator(nn.Module):
    """Conv-BN-LeakyReLU stack, global average pooling and a linear logit.

    Args:
        in_channels: channels of the feature map it judges.
        channels: output channels of each conv block; every block after the first halves the resolution.
        spectral_norm: spectral normalisation of every weight instead of batch norm (SN-GAN, Miyato et al.
            2018): bounds the discriminator's Lipschitz constant, so its gradients to the student stay tame.
    """

    def __init__(self, in_channels: int, channels: tuple[int, ...] = (128, 128), spectral_norm: bool = False) -> None:
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
                    norm=None if spectral_norm else "batch",
                )
            )
            if spectral_norm:
                _spectral_norm(blocks[-1].conv)
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, 1))
        if spectral_norm:
            _spectral_norm(self.head[-1])

    def forward(self, x: torch.Tensor, embed: bool = False) -> torch.Tensor:
        """
        Args:
            x: features ``(N, C, h, w)``.
            embed: return the pooled penultimate features ``(N, channels[-1])`` instead of the logits (feature
                matching); a flag rather than a method, so that a DDP-wrapped discriminator syncs it too.

        Returns:
            logits ``(N, 1)``; positive means "looks like the teacher".
        """
        pooled = self.head[:-1](self.features(x))
        return pooled if embed else self.head[-1](pooled)
