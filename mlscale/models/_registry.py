"""The name registry behind ``mlscale.models``: specs, dial validation and run names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from mlscale.errors import MlscaleError

__all__ = [
    "ModelSpec",
    "get_model",
    "list_models",
    "model_spec",
    "register_model",
    "run_name",
    "scale_channels",
]


@dataclass(frozen=True)
class ModelSpec:
    """A model family: its builder, the allowed range of each dial and their defaults.

    ``builder`` takes the keyword arguments ``width``, ``depth``, ``in_channels``,
    ``num_classes`` and ``image_size``; both ranges are inclusive.
    """

    name: str
    builder: Callable[..., nn.Module]
    width_range: tuple[float, float]
    depth_range: tuple[int, int]
    default_width: float
    default_depth: int
    description: str


_MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the registry; a name registered twice is a programming error."""
    if spec.name in _MODELS:
        raise ValueError(f"model {spec.name!r} is already registered")
    _MODELS[spec.name] = spec
    return spec


def list_models() -> list[str]:
    """The registered architecture names, sorted."""
    return sorted(_MODELS)


def model_spec(name: str) -> ModelSpec:
    """The spec registered as ``name``; an unknown name is a user error."""
    try:
        return _MODELS[name]
    except KeyError:
        choices = ", ".join(list_models())
        raise MlscaleError(f"unknown architecture {name!r}; choose one of: {choices}") from None


def check_dials(name: str, width: float | None, depth: int | None) -> tuple[float, int]:
    """``name``'s width and depth (``None``: the family default), or a one-line error when
    either lies outside the family's range (before any model is built or data read)."""
    spec = model_spec(name)
    width = spec.default_width if width is None else width
    depth = spec.default_depth if depth is None else depth
    (w_lo, w_hi), (d_lo, d_hi) = spec.width_range, spec.depth_range
    if (
        isinstance(width, bool)
        or not isinstance(width, int | float)
        or width <= 0
        or not w_lo <= width <= w_hi
    ):
        raise MlscaleError(f"width must be in [{w_lo:g}, {w_hi:g}] for {name}, got {width}")
    if isinstance(depth, bool) or not isinstance(depth, int) or not d_lo <= depth <= d_hi:
        raise MlscaleError(f"depth must be an integer in [{d_lo}, {d_hi}] for {name}, got {depth}")
    return width, depth


def get_model(
    name: str,
    *,
    width: float | None = None,
    depth: int | None = None,
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 28,
) -> nn.Module:
    """Build architecture ``name`` at the given dials (``None`` means the family default).

    >>> import torch
    >>> import mlscale.models as models
    >>> model = models.get_model("resnet_mini", width=0.5, depth=1)
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """
    spec = model_spec(name)
    width, depth = check_dials(name, width, depth)
    return spec.builder(
        width=width,
        depth=depth,
        in_channels=in_channels,
        num_classes=num_classes,
        image_size=image_size,
    )


def run_name(name: str, width: float, depth: int) -> str:
    """Name a run after its dials, e.g. ``resnet_mini-w2-d3`` (width to 3 digits)."""
    return f"{name}-w{width:.3g}-d{depth}"


def scale_channels(base: float, width: float) -> int:
    """``base`` channels times the width multiplier, rounded, never below one."""
    return max(1, round(base * width))
