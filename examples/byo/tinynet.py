"""A user-defined model family for mlscale: a small all-convolutional net.

mlscale reaches it as ``tinynet:tiny_cnn`` (``module:builder``) when run from this folder.
The builder follows the zoo's contract: keyword arguments ``width``, ``depth``,
``in_channels``, ``num_classes`` and ``image_size``; it returns an ``nn.Module`` that maps
``(batch, in_channels, image_size, image_size)`` images to ``(batch, num_classes)`` logits.
"""

from __future__ import annotations

from torch import nn


def tiny_cnn(*, width: float = 1.0, depth: int = 1, in_channels: int = 3,
             num_classes: int = 10, image_size: int = 32) -> nn.Module:
    """Tiny CNN: two strided stages of 3x3 convs (``depth`` per stage), global pooling."""
    channels = [max(1, round(16 * width)), max(1, round(32 * width))]
    layers: list[nn.Module] = []
    previous = in_channels
    for out in channels:
        for index in range(depth):
            stride = 2 if index == 0 else 1
            layers += [nn.Conv2d(previous, out, 3, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            previous = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(previous, num_classes))


# Optional: the dial ranges mlscale accepts (and `mlscale budget` searches over).
tiny_cnn.width_range = (0.25, 4.0)  # type: ignore[attr-defined]
tiny_cnn.depth_range = (1, 3)  # type: ignore[attr-defined]
