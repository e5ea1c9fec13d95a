"""AlexNet (Krizhevsky et al., 2012), shrunk for 28x28 and 32x32 images.

Kernels shrink with depth as in AlexNet: a 7x7 conv and a 5x5 conv, each followed by
ReLU and a 2x2 max-pool, then a middle block of ``depth`` 3x3 convs and a last pool, an
adaptive average pool to 3x3 and a dropout MLP head. ``width`` scales every conv and
hidden layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mlscale.models._fast_cpu import MaxPool2x2
from mlscale.models._registry import family, scale_channels

__all__ = ["AlexNet", "alexnet_mini"]


class AlexNet(nn.Module):
    """Large-kernel conv stem, a block of 3x3 convs, max-pools, a dropout MLP head."""

    def __init__(
        self,
        channels: Sequence[int],
        middle_convs: int,
        hidden: int,
        in_channels: int,
        num_classes: int,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels
        middle: list[nn.Module] = []
        for i in range(middle_convs):
            middle += [nn.Conv2d(c2 if i == 0 else c3, c3, 3, padding=1), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 7, padding=3),
            nn.ReLU(inplace=True),
            MaxPool2x2(),
            nn.Conv2d(c1, c2, 5, padding=2),
            nn.ReLU(inplace=True),
            MaxPool2x2(),
            *middle,
            MaxPool2x2(),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(3)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c3 * 3 * 3, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)))


def _alexnet(
    channels: Sequence[int],
    hidden: int,
    *,
    width: float = 1.0,
    depth: int = 3,
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 28,
) -> AlexNet:
    del image_size  # the adaptive pool makes the head independent of the input size
    return AlexNet(
        [scale_channels(c, width) for c in channels],
        depth,
        scale_channels(hidden, width),
        in_channels,
        num_classes,
    )


@family(
    width_range=(0.25, 4.0),
    depth_range=(1, 5),
    default_width=1.0,
    default_depth=3,
    description="AlexNet-style convs, max-pools and dropout MLP; depth = middle 3x3 convs",
)
def alexnet_mini(**kwargs: Any) -> AlexNet:
    """AlexNet-mini: 32/64 stem channels, 96-channel 3x3 block, 256-unit head."""
    return _alexnet((32, 64, 96), 256, **kwargs)
