"""VGG (Simonyan & Zisserman, 2014), shrunk for 28x28 and 32x32 images.

Three stages of 3x3 conv + BatchNorm + ReLU with a 2x2 max-pool after each, then a
global average pool and one linear layer. ``depth`` is the number of convs per stage;
``width`` scales the 32/64/128 stage channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mlscale.models._fast_cpu import ConvBnAct, GlobalAvgPool2d, MaxPool2x2
from mlscale.models._registry import family, scale_channels

__all__ = ["VGG", "vgg_mini"]


class VGG(nn.Module):
    """Stages of ``convs_per_stage`` 3x3 conv-BN-ReLU layers, max-pool between stages."""

    def __init__(
        self,
        channels: Sequence[int],
        convs_per_stage: int,
        in_channels: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for out_channels in channels:
            for _ in range(convs_per_stage):
                layers.append(ConvBnAct(in_channels, out_channels, 3))
                in_channels = out_channels
            layers.append(MaxPool2x2())
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            GlobalAvgPool2d(), nn.Flatten(), nn.Linear(in_channels, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _vgg(
    channels: Sequence[int],
    *,
    width: float = 1.0,
    depth: int = 2,
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 28,
) -> VGG:
    del image_size  # the global pool makes the head independent of the input size
    return VGG([scale_channels(c, width) for c in channels], depth, in_channels, num_classes)


@family(
    width_range=(0.25, 4.0),
    depth_range=(1, 4),
    default_width=1.0,
    default_depth=2,
    description="VGG-style 3x3 conv-BN-ReLU stages; depth = convs per stage",
)
def vgg_mini(**kwargs: Any) -> VGG:
    """VGG-mini: stages of 32, 64 and 128 channels."""
    return _vgg((32, 64, 128), **kwargs)
