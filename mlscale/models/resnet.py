"""CIFAR-style ResNet (He et al., 2015, section 4.2) built from torchvision's BasicBlock.

A 3x3 stem, three stages of ``depth`` BasicBlocks (the second and third start with a
stride-2 block and a 1x1 projection shortcut), a global average pool and a linear layer.
``width`` scales the 16/32/64 stage channels; depth 3 is ResNet-20, depth 9 ResNet-56.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from mlscale.models._fast_cpu import BatchNorm2d, ConvBnAct, GlobalAvgPool2d, SubsampledConv2d
from mlscale.models._registry import family, scale_channels

__all__ = ["ResNet", "resnet_mini"]


class ResNet(nn.Module):
    """A stem conv, one stage of BasicBlocks per entry of ``channels``, a linear head."""

    def __init__(
        self,
        channels: Sequence[int],
        blocks_per_stage: int,
        in_channels: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBnAct(in_channels, channels[0], 3)]
        in_channels = channels[0]
        for stage, out_channels in enumerate(channels):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                shortcut = None
                if stride != 1 or in_channels != out_channels:
                    shortcut = ConvBnAct(in_channels, out_channels, 1, stride=stride,
                                         activation_layer=None, conv_layer=SubsampledConv2d)
                layers.append(BasicBlock(in_channels, out_channels, stride, shortcut,
                                         norm_layer=BatchNorm2d))
                in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            GlobalAvgPool2d(), nn.Flatten(), nn.Linear(in_channels, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _resnet(
    channels: Sequence[int],
    *,
    width: float = 1.0,
    depth: int = 3,
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 28,
) -> ResNet:
    del image_size  # the global pool makes the head independent of the input size
    return ResNet([scale_channels(c, width) for c in channels], depth, in_channels, num_classes)


@family(
    width_range=(0.25, 4.0),
    depth_range=(1, 9),
    default_width=1.0,
    default_depth=3,
    description="CIFAR-style ResNet of BasicBlocks in 3 stages; depth = blocks per stage",
)
def resnet_mini(**kwargs: Any) -> ResNet:
    """ResNet-mini: stages of 16, 32 and 64 channels (ResNet-20 at depth 3)."""
    return _resnet((16, 32, 64), **kwargs)
