"""GoogLeNet (Szegedy et al., 2014), shrunk for 28x28 and 32x32 images.

A 3x3 conv stem and a stride-2 max-pool, then ``depth`` inception blocks (1x1, 1x1->3x3,
1x1->5x5 and 3x3-pool->1x1 branches, concatenated) with a stride-2 max-pool after every
second block, where the branch widths double; then a global average pool and a linear
layer. The branch ratios follow GoogLeNet's block 3a; ``width`` scales every conv.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mlscale.models._fast_cpu import ConvBnAct, GlobalAvgPool2d, concat_channels
from mlscale.models._registry import family, scale_channels

__all__ = ["GoogLeNet", "Inception", "inception_mini"]


class Inception(nn.Module):
    """Four parallel branches, concatenated along the channels."""

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch5x5red: int,
        ch5x5: int,
        pool_proj: int,
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [
                ConvBnAct(in_channels, ch1x1, 1),
                nn.Sequential(
                    ConvBnAct(in_channels, ch3x3red, 1),
                    ConvBnAct(ch3x3red, ch3x3, 3),
                ),
                nn.Sequential(
                    ConvBnAct(in_channels, ch5x5red, 1),
                    ConvBnAct(ch5x5red, ch5x5, 5),
                ),
                nn.Sequential(
                    nn.MaxPool2d(3, stride=1, padding=1),
                    ConvBnAct(in_channels, pool_proj, 1),
                ),
            ]
        )
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return concat_channels([branch(x) for branch in self.branches], self.training)


class GoogLeNet(nn.Module):
    """A stem, inception blocks with a max-pool after every second one, a linear head.

    Each entry of ``blocks`` is ``(ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj)``.
    """

    def __init__(
        self,
        stem_channels: int,
        blocks: Sequence[Sequence[int]],
        in_channels: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            ConvBnAct(in_channels, stem_channels, 3),
            nn.MaxPool2d(3, stride=2, padding=1),
        ]
        in_channels = stem_channels
        for i, branch_channels in enumerate(blocks):
            if i > 0 and i % 2 == 0:
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
            block = Inception(in_channels, *branch_channels)
            layers.append(block)
            in_channels = block.out_channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            GlobalAvgPool2d(), nn.Flatten(), nn.Linear(in_channels, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _googlenet(
    stem_channels: int,
    block: Sequence[int],
    *,
    width: float = 1.0,
    depth: int = 4,
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 28,
) -> GoogLeNet:
    del image_size  # the global pool makes the head independent of the input size
    blocks = [[scale_channels(c * 2 ** (i // 2), width) for c in block] for i in range(depth)]
    return GoogLeNet(scale_channels(stem_channels, width), blocks, in_channels, num_classes)


@family(
    width_range=(0.25, 4.0),
    depth_range=(1, 8),
    default_width=1.0,
    default_depth=4,
    description="GoogLeNet-style inception blocks; depth = number of blocks",
)
def inception_mini(**kwargs: Any) -> GoogLeNet:
    """Inception-mini: 32-channel stem, first blocks 16 + 24->32 + 4->8 + 8 = 64 channels."""
    return _googlenet(32, (16, 24, 32, 4, 8, 8), **kwargs)
