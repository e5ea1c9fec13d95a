"""EfficientNet (Tan & Le, 2019), shrunk for 28x28 and 32x32 images.

A 3x3 stem (stride 1, as the images are small), stages of MBConv blocks (1x1 expand,
3x3 depthwise, squeeze-excitation, 1x1 project, residual when the shapes allow; SiLU
throughout), a 1x1 head conv, global average pool, dropout and a linear layer.

The ``depth`` dial is EfficientNet's compound coefficient phi: one integer scales depth
and width together, as in the paper's B0..B7 family. Each stage's block count becomes
``ceil(repeats * 1.2**phi)`` and every channel count is multiplied by ``1.1**phi``
(times the ``width`` dial). The paper's third factor, resolution (1.15**phi), is left
out because the dataset fixes the image size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.ops import SqueezeExcitation

from mlscale.models._fast_cpu import ConvBnAct, DepthwiseConv2d, GlobalAvgPool2d
from mlscale.models._registry import family, scale_channels

__all__ = ["EfficientNet", "MBConv", "efficientnet_mini"]

DEPTH_BASE = 1.2  # alpha: layer repeats grow by DEPTH_BASE**phi
WIDTH_BASE = 1.1  # beta: channels grow by WIDTH_BASE**phi

Stage = tuple[int, int, int, int]  # (expand ratio, out channels, repeats, first stride)


class MBConv(nn.Module):
    """Mobile inverted bottleneck: expand, depthwise conv, squeeze-excite, project."""

    def __init__(self, in_channels: int, out_channels: int, expand_ratio: int, stride: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBnAct(in_channels, hidden, 1, activation_layer=nn.SiLU))
        layers += [
            ConvBnAct(hidden, hidden, 3, stride=stride, groups=hidden,
                      activation_layer=nn.SiLU, conv_layer=DepthwiseConv2d),
            SqueezeExcitation(hidden, max(1, in_channels // 4), activation=nn.SiLU),
            ConvBnAct(hidden, out_channels, 1, activation_layer=None),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class EfficientNet(nn.Module):
    """A stem, MBConv stages as given by ``stages``, a 1x1 head conv and a linear layer."""

    def __init__(
        self,
        stem_channels: int,
        stages: Sequence[Stage],
        head_channels: int,
        in_channels: int,
        num_classes: int,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            ConvBnAct(in_channels, stem_channels, 3, activation_layer=nn.SiLU)
        ]
        in_channels = stem_channels
        for expand_ratio, out_channels, repeats, stride in stages:
            for i in range(repeats):
                layers.append(
                    MBConv(in_channels, out_channels, expand_ratio, stride if i == 0 else 1)
                )
                in_channels = out_channels
        layers.append(ConvBnAct(in_channels, head_channels, 1, activation_layer=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            GlobalAvgPool2d(),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(head_channels, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _efficientnet(
    stem_channels: int,
    stages: Sequence[Stage],
    head_channels: int,
    *,
    width: float = 1.0,
    depth: int = 0,
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 28,
) -> EfficientNet:
    del image_size  # the global pool makes the head independent of the input size
    width_mult, depth_mult = width * WIDTH_BASE**depth, DEPTH_BASE**depth
    scaled = [
        (expand, scale_channels(channels, width_mult), math.ceil(repeats * depth_mult), stride)
        for expand, channels, repeats, stride in stages
    ]
    return EfficientNet(
        scale_channels(stem_channels, width_mult),
        scaled,
        scale_channels(head_channels, width_mult),
        in_channels,
        num_classes,
    )


@family(
    width_range=(0.25, 4.0),
    depth_range=(0, 4),
    default_width=1.0,
    default_depth=0,
    description="EfficientNet-style MBConv+SE stages; depth = compound coefficient phi",
)
def efficientnet_mini(**kwargs: Any) -> EfficientNet:
    """EfficientNet-mini: B0-like stages of 16, 24, 40 and 80 channels, a 320-channel head."""
    return _efficientnet(
        16, [(1, 16, 1, 1), (6, 24, 2, 2), (6, 40, 2, 2), (6, 80, 2, 2)], 320, **kwargs
    )
