"""The name registry behind ``mlscale.models``: specs, dial validation and run names."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from mlscale.errors import MlscaleError
from mlscale.models._user import (
    ENTRY_POINT_GROUP,
    UNBOUNDED_DEPTH,
    adapt_builder,
    entry_point_families,
    is_import_path,
)

__all__ = [
    "ModelSpec",
    "family",
    "format_range",
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
    ``num_classes`` and ``image_size``; both ranges are inclusive. ``source`` is the
    ``module:builder`` of a user family (empty for the built-in ones). ``lr``,
    ``weight_decay`` and ``warmup_share`` are the family's training defaults (AdamW's peak
    learning rate and decoupled weight decay, the one-cycle schedule's warm-up share),
    used wherever a run does not set its own.
    """

    name: str
    builder: Callable[..., nn.Module]
    width_range: tuple[float, float]
    depth_range: tuple[int, int]
    default_width: float
    default_depth: int
    description: str
    source: str = ""
    lr: float = 3e-3
    weight_decay: float = 5e-4
    warmup_share: float = 0.25

    @property
    def bounded(self) -> bool:
        """Whether both dial ranges are finite (user families may leave them open)."""
        return self.finite_range("width") is not None and self.finite_range("depth") is not None

    def finite_range(self, dial: str) -> tuple[float, float] | None:
        """The ``width`` or ``depth`` range, or None where the family leaves it open."""
        low, high = self.width_range if dial == "width" else self.depth_range
        return (low, high) if high < (math.inf if dial == "width" else UNBOUNDED_DEPTH) else None

    def resolve(self, width: float | None, depth: int | None) -> tuple[float, int]:
        """The dials a run uses (``None``: the family default), or a one-line error when
        either lies outside the family's range (before any model is built or data read)."""
        width = self.default_width if width is None else width
        depth = self.default_depth if depth is None else depth
        (w_lo, w_hi), (d_lo, d_hi) = self.width_range, self.depth_range
        if (
            isinstance(width, bool)
            or not isinstance(width, int | float)
            or width <= 0
            or not w_lo <= width <= w_hi
        ):
            raise MlscaleError(f"width must be in {format_range(self.width_range)} for "
                               f"{self.name}, got {width}")
        if isinstance(depth, bool) or not isinstance(depth, int) or not d_lo <= depth <= d_hi:
            raise MlscaleError(f"depth must be an integer in {format_range(self.depth_range)} "
                               f"for {self.name}, got {depth}")
        return width, depth


Builder = Callable[..., nn.Module]
_MODELS: dict[str, ModelSpec] = {}
_USER_MODELS: dict[str, ModelSpec] = {}  # resolved user families, by the name they were given


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the registry; a name registered twice is a programming error."""
    if spec.name in _MODELS:
        raise ValueError(f"model {spec.name!r} is already registered")
    _MODELS[spec.name] = spec
    return spec


def family(**spec: Any) -> Callable[[Builder], Builder]:
    """Register the decorated builder as a family named after it, with ``spec``'s dial
    ranges, defaults and training defaults (as torchvision's ``@register_model()``)."""

    def register(builder: Builder) -> Builder:
        register_model(ModelSpec(name=builder.__name__, builder=builder, **spec))
        return builder

    return register


def list_models() -> list[str]:
    """The architecture names: the built-in ones and installed entry points, sorted."""
    declared = entry_point_families()
    if clash := sorted(set(declared) & set(_MODELS)):
        raise MlscaleError(f"the {ENTRY_POINT_GROUP} entry point {clash[0]!r} "
                           f"({declared[clash[0]]}) clashes with a built-in family; rename it")
    return sorted(set(_MODELS) | set(declared))


def model_spec(name: str) -> ModelSpec:
    """The family ``name`` resolves to, the one place where names are resolved: a
    registered family, an ``mlscale.models`` entry point, or ``package.module:builder``.
    An unknown name is a user error."""
    if name in _MODELS:
        return _MODELS[name]
    if name in _USER_MODELS:
        return _USER_MODELS[name]
    if not isinstance(name, str):
        raise MlscaleError(f"architecture must be a name, got {name!r}")
    target = entry_point_families().get(name) or (name if is_import_path(name) else None)
    if target is None:
        choices = ", ".join(list_models())
        raise MlscaleError(f"unknown architecture {name!r}; choose one of: {choices}, or "
                           "name a builder as package.module:function")
    spec = ModelSpec(**adapt_builder(name, target))
    _USER_MODELS[name] = spec
    return spec


def check_dials(name: str, width: float | None, depth: int | None) -> tuple[float, int]:
    """``name``'s width and depth (``None``: the family default), or a one-line error when
    either lies outside the family's range (before any model is built or data read)."""
    return model_spec(name).resolve(width, depth)


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
    width, depth = spec.resolve(width, depth)
    return spec.builder(
        width=width,
        depth=depth,
        in_channels=in_channels,
        num_classes=num_classes,
        image_size=image_size,
    )


def format_range(bounds: tuple[float, float]) -> str:
    """``[low, high]``, or ``[low, any]`` for a range a user family leaves open."""
    high = "any" if bounds[1] >= UNBOUNDED_DEPTH else f"{bounds[1]:g}"
    return f"[{bounds[0]:g}, {high}]"


def run_name(name: str, width: float, depth: int) -> str:
    """Name a run after its dials, e.g. ``resnet_mini-w2-d3`` (width to 3 digits)."""
    return f"{name}-w{width:.3g}-d{depth}"


def scale_channels(base: float, width: float) -> int:
    """``base`` channels times the width multiplier, rounded to a round count.

    Odd channel counts train slower per FLOP on CPU than round ones (benchmarks/
    zoo_throughput.py), so counts follow torchvision's divisibility rule (its
    ``_make_divisible``: the nearest multiple of the divisor, never 10% below the exact
    count). The divisor is 8, halved while it is over half the count (small counts keep
    their size) or does not divide ``base`` (each family's own design at width 1 stays
    exact: LeNet-5 keeps its 6 and 84). Never below one.
    """
    from torchvision.models._utils import _make_divisible

    exact = base * width
    divides_base = float(base).is_integer()
    divisor = 8
    while divisor > 1 and (divisor > exact / 2 or (divides_base and int(base) % divisor)):
        divisor //= 2
    return max(1, _make_divisible(exact, divisor))
