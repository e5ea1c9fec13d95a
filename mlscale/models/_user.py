"""Model families from user code: ``package.module:builder`` names and ``mlscale.models``
entry points, adapted to the zoo's :class:`ModelSpec`.

A builder follows the zoo's contract: it takes the keyword arguments ``width``, ``depth``,
``in_channels``, ``num_classes`` and ``image_size`` (or ``**kwargs``) and returns an
``nn.Module`` whose output is ``(batch, num_classes)`` logits. Its defaults for ``width``
and ``depth`` come from its signature (1.0 and 1 where it has none); it may declare the
allowed ranges as attributes ``builder.width_range`` and ``builder.depth_range``, else any
positive width and any depth of at least 0 are accepted and a pipeline's ranges rule.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from torch import nn

from mlscale.errors import MlscaleError

__all__ = ["ENTRY_POINT_GROUP", "UNBOUNDED_DEPTH", "adapt_builder", "entry_point_families",
           "is_import_path"]

ENTRY_POINT_GROUP = "mlscale.models"
UNBOUNDED_DEPTH = 2**31 - 1
CONTRACT = ("width", "depth", "in_channels", "num_classes", "image_size")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_import_path(name: str) -> bool:
    """Whether ``name`` has the form ``package.module:builder``."""
    return bool(_IMPORT_PATH.match(name))


def entry_point_families() -> dict[str, str]:
    """Family name -> ``module:builder`` of every installed ``mlscale.models`` entry point."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_builder(target: str, label: str) -> Callable[..., Any]:
    """Import ``module:attribute`` from the working directory or the installed environment."""
    module_name, _, attribute = target.partition(":")
    if "" not in sys.path:  # `python -m` and console scripts leave the working directory out
        sys.path.append("")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise MlscaleError(f"family {label}: cannot import {module_name}: {error}") from None
    except Exception as error:
        raise MlscaleError(f"family {label}: importing {module_name} failed: "
                           f"{type(error).__name__}: {error}") from None
    builder: Any = module
    for part in attribute.split("."):
        builder = getattr(builder, part, None)
        if builder is None:
            raise MlscaleError(f"family {label}: {module_name} has no attribute {attribute}")
    if not callable(builder):
        raise MlscaleError(f"family {label}: {target} is not callable")
    return builder


def _signature_defaults(builder: Callable[..., Any], label: str) -> tuple[float, int]:
    try:
        parameters = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        return 1.0, 1
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    missing = [name for name in CONTRACT if name not in parameters]
    if missing and not accepts_any:
        raise MlscaleError(f"family {label}: the builder must accept the keyword arguments "
                           f"{', '.join(CONTRACT)}; it lacks {', '.join(missing)}")

    def default(name: str, fallback: Any) -> Any:
        parameter = parameters.get(name)
        if parameter is None or parameter.default is inspect.Parameter.empty:
            return fallback
        return parameter.default

    return float(default("width", 1.0)), int(default("depth", 1))


def _checked_builder(builder: Callable[..., Any], label: str) -> Callable[..., nn.Module]:
    """``builder`` wrapped so that a failure, a non-module or a wrong output shape is a
    one-line error naming the builder and the dials."""
    import functools

    import torch

    @functools.wraps(builder)  # inspect.unwrap finds the user's code (cache keys hash it)
    def build(**dials: Any) -> nn.Module:
        shown = ", ".join(f"{k}={v}" for k, v in dials.items())
        try:
            model = builder(**dials)
        except Exception as error:
            raise MlscaleError(f"family {label} failed at {shown}: "
                               f"{type(error).__name__}: {error}") from None
        if not isinstance(model, nn.Module):
            raise MlscaleError(f"family {label} returned {type(model).__name__}, not an "
                               f"nn.Module, at {shown}")
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        size = dials["image_size"]
        probe = torch.zeros(2, dials["in_channels"], size, size, device=device)
        was_training = model.training
        try:
            with torch.no_grad():
                output = model.eval()(probe)
        except Exception as error:
            raise MlscaleError(f"family {label}: the forward pass failed at {shown}: "
                               f"{type(error).__name__}: {error}") from None
        finally:
            model.train(was_training)
        expected = (2, dials["num_classes"])
        if not isinstance(output, torch.Tensor) or tuple(output.shape) != expected:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
            raise MlscaleError(f"family {label}: output shape {got} at {shown}; expected "
                               f"(batch, num_classes) = {expected}")
        return model

    return build


def _range(builder: Callable[..., Any], name: str, fallback: tuple[float, float],
           label: str) -> tuple[float, float]:
    declared = getattr(builder, name, None)
    if declared is None:
        return fallback
    try:
        low, high = (float(v) for v in declared)
    except (TypeError, ValueError):
        raise MlscaleError(f"family {label}: {name} must be a (low, high) pair, got "
                           f"{declared!r}") from None
    if not 0 <= low <= high:
        raise MlscaleError(f"family {label}: {name} {declared!r} is not an increasing range")
    return low, high


def adapt_builder(name: str, target: str) -> dict[str, Any]:
    """The ModelSpec fields of family ``name`` built by ``target`` (``module:builder``)."""
    label = name if name == target else f"{name} ({target})"
    builder = load_builder(target, label)
    width, depth = _signature_defaults(builder, label)
    w_lo, w_hi = _range(builder, "width_range", (0.0, math.inf), label)
    d_lo, d_hi = _range(builder, "depth_range", (0, UNBOUNDED_DEPTH), label)
    doc = (inspect.getdoc(builder) or "").strip().splitlines()
    return {
        "name": name, "builder": _checked_builder(builder, label),
        "width_range": (w_lo, w_hi), "depth_range": (int(d_lo), int(d_hi)),
        "default_width": width, "default_depth": depth,
        "description": doc[0] if doc else f"user family {target}", "source": target,
    }
