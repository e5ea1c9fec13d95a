"""Input checks shared by the CLI and the loaders: numbers, text files, strict YAML.

Every check fails with a one-line :class:`MlscaleError` (or click's usage error for
options) that names the option, key or file, before any data is loaded.

>>> import click
>>> PositiveNumber().convert("1e12", None, None)
1000000000000.0
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mlscale.errors import MlscaleError, first_line

if TYPE_CHECKING:
    import yaml

__all__ = ["PositiveNumber", "check_finite_positive", "load_yaml_file", "read_text"]


def check_finite_positive(value: float, name: str) -> float:
    """``value`` if it is a finite number above 0, else a one-line error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value > 0):
        raise MlscaleError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


class PositiveNumber(click.ParamType):
    """A click option type: a finite float above 0.

    click's FloatRange lets ``nan``, ``inf`` and ``1e400`` (which float() reads as inf)
    through; a budget, a duration or a rate must be a real, finite, positive number.
    """

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not (math.isfinite(number) and number > 0):
            self.fail(f"{value!r} is not a positive finite number", param, ctx)
        return number


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of ``path``; unreadable or non-UTF-8 files are one-line errors."""
    path = Path(path)
    try:
        payload = path.read_bytes()
    except OSError as error:
        raise MlscaleError(f"cannot read {what} {path}: "
                           f"{error.strerror or type(error).__name__}") from None
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as error:
        raise MlscaleError(f"{what} {path} is not UTF-8 text (byte {error.start} is "
                           f"{payload[error.start]:#04x}); save it as UTF-8") from None


def _unique_key_loader() -> type[yaml.SafeLoader]:
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """PyYAML's SafeLoader, except that a key given twice in one mapping is an error
        (YAML 1.2 requires unique keys; PyYAML silently keeps the last)."""

        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False
                              ) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def load_yaml_file(path: str | Path, what: str) -> Any:
    """Parse the YAML file ``path`` (UTF-8, no duplicate keys) or fail on one line."""
    import yaml

    text = read_text(path, what)
    try:
        return yaml.load(text, Loader=_unique_key_loader())  # a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or first_line(error)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise MlscaleError(f"{path}: not valid YAML: {problem}{where}") from None
