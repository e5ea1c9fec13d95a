"""LeNet-5 (LeCun et al., 1998) with ReLU and max-pooling.

At width 1, depth 1 on a 1x28x28 input (padded to 32x32 by the first conv) it is the
classic network: 61,706 parameters and 416,520 MACs per forward pass. ``width`` scales
every layer (6/16 conv channels, 120/84 hidden units); ``depth`` is the number of conv
layers per stage, each extra one a ReLU + 3x3 conv before the stage's pool. Each stage
pools before its last ReLU (the two commute) and trains through ``_fast_cpu``'s layers,
which LeNet's 6-channel maps need on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mlscale.errors import MlscaleError
from mlscale.models._fast_cpu import Conv2d, MaxPool2x2
from mlscale.models._registry import family, scale_channels

__all__ = ["LeNet", "lenet5"]


class LeNet(nn.Module):
    """Two conv stages (5x5 conv, extra 3x3 convs, 2x2 max-pool), then an MLP head."""

    def __init__(
        self,
        channels: Sequence[int],
        hidden: Sequence[int],
        convs_per_stage: int,
        in_channels: int,
        num_classes: int,
        image_size: int,
    ) -> None:
        super().__init__()
        side = (image_size // 2 - 4) // 2  # conv1 keeps the size, pool, conv2 trims 4, pool
        if side < 1:
            raise MlscaleError(f"LeNet needs image_size >= 12, got {image_size}")
        c1, c2 = channels
        self.features = nn.Sequential(
            *_stage(in_channels, c1, convs_per_stage, padding=2),
            *_stage(c1, c2, convs_per_stage, padding=0),
        )
        h1, h2 = hidden
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * side * side, h1),
            nn.ReLU(inplace=True),
            nn.Linear(h1, h2),
            nn.ReLU(inplace=True),
            nn.Linear(h2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _stage(in_channels: int, out_channels: int, convs: int, padding: int) -> list[nn.Module]:
    """The convs, then the pool before the last ReLU: they commute, and the ReLU after the
    pool touches a quarter of the elements."""
    layers: list[nn.Module] = [Conv2d(in_channels, out_channels, 5, padding=padding)]
    for _ in range(convs - 1):
        layers += [nn.ReLU(inplace=True), Conv2d(out_channels, out_channels, 3, padding=1)]
    return [*layers, MaxPool2x2(), nn.ReLU(inplace=True)]


def _lenet(
    channels: Sequence[int],
    hidden: Sequence[int],
    *,
    width: float = 1.0,
    depth: int = 1,
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 28,
) -> LeNet:
    return LeNet(
        [scale_channels(c, width) for c in channels],
        [scale_channels(h, width) for h in hidden],
        depth,
        in_channels,
        num_classes,
        image_size,
    )


@family(
    width_range=(0.1, 8.0),
    depth_range=(1, 3),
    default_width=1.0,
    default_depth=1,
    description="LeNet-5 with ReLU and max-pool; depth = convs per stage",
    # Without batch norm this small net wants a higher peak LR than the zoo's 3e-3:
    # 4 epochs reach 99.35% at 1e-2 against 98.99% at 3e-3 (docs/BENCHMARKS.md).
    lr=1e-2,
)
def lenet5(**kwargs: Any) -> LeNet:
    """LeNet-5: 6/16 conv channels, 120/84 hidden units (``width``, ``depth`` as above)."""
    return _lenet((6, 16), (120, 84), **kwargs)
