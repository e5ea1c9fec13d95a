"""The root ``mlscale`` group and what every command shares: dataset names, JSON output,
the live status line."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from mlscale.errors import MlscaleError

DATASET_NAMES = ("mnist", "fashion-mnist")


USER_SOURCES = ("npz:PATH", "imagefolder:PATH", "torchvision:NAME")
# What every --dataset option shows in --help: the names and forms it really accepts.
DATASET_METAVAR = "|".join((*DATASET_NAMES, *USER_SOURCES))


class _DatasetType(click.Choice[str]):
    """A built-in dataset name, or a user source ``npz:PATH``, ``imagefolder:PATH`` or
    ``torchvision:NAME`` (checked for form here, read by the command); with
    ``registry_names``, also a user source's name in the registry (``npz-STEM``, ...), for
    commands that only filter what was registered."""

    def __init__(self, *, registry_names: bool = False) -> None:
        super().__init__(DATASET_NAMES)
        self.registry_names = registry_names

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return DATASET_METAVAR + ("|REGISTRY-NAME" if self.registry_names else "")

    def get_invalid_choice_message(self, value: Any, ctx: click.Context | None) -> str:
        from pathlib import Path

        message = (f"{value!r} is not one of {', '.join(map(repr, DATASET_NAMES))}, "
                   f"{', '.join(USER_SOURCES)}")
        path = Path(str(value)).expanduser()
        if path.suffix.lower() == ".npz":
            return f"{message}; did you mean npz:{value}?"
        if path.is_dir() or ("/" in str(value) and not path.suffix):
            return f"{message}; did you mean imagefolder:{value}?"
        return message

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> Any:
        from mlscale.names import is_dataset_name, split_source

        if isinstance(value, str) and ":" in value:
            try:
                split_source(value)
            except MlscaleError as error:
                self.fail(str(error), param, ctx)
            return value
        if self.registry_names and isinstance(value, str) and is_dataset_name(value):
            return value
        return super().convert(value, param, ctx)


def dataset_choice(*, default: str | None = "mnist", help: str | None = None
                   ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A ``--dataset`` option: every command's takes the same values and shows the same
    metavar; ``default=None`` for a filter (every dataset unless given)."""
    return click.option(
        "--dataset", type=_DatasetType(), default=default, show_default=default is not None,
        help=help or "Dataset to use: a built-in name, npz:PATH, imagefolder:PATH or "
                     "torchvision:NAME.",
    )


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
dataset_option = dataset_choice()
tracking_option = click.option(
    "--tracking-uri", default=None,
    help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else mlflow.yaml).",
)
root_option = click.option(
    "--root", type=click.Path(file_okay=False), default=None,
    help="Data root (default: $MLSCALE_DATA_ROOT, else data/ in the checkout).",
)


def _print_json(payload: Any) -> None:
    """Strict JSON (RFC 8259 has no NaN or Infinity): non-finite numbers print as null."""
    click.echo(json.dumps(_finite_or_null(payload), indent=2, default=str, allow_nan=False))


def _finite_or_null(value: Any) -> Any:
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(item) for item in value]
    return value


class _StatusLine:
    """A single live line on stderr, shown only when stderr is a terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self.width = 0

    def show(self, text: str) -> None:
        if self.enabled:
            click.echo("\r" + text.ljust(self.width), nl=False, err=True)
            self.width = len(text)

    def clear(self) -> None:
        if self.enabled and self.width:
            click.echo("\r" + " " * self.width + "\r", nl=False, err=True)
            self.width = 0


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlscale")
def cli() -> None:
    """mlscale: search, register and fit scaling laws under a FLOPs budget.

    FLOPs convention everywhere: FLOPs = 2 x MACs, as counted by torch's FlopCounterMode.
    """


def _check_names(dataset: str | None, arch: str | None) -> None:
    """An unknown dataset or architecture is an error, not an empty table."""
    if dataset is not None:
        from mlscale.data import dataset_info

        dataset_info(dataset)
    if arch is not None:  # imported only here: the zoo imports torch and torchvision (6 s)
        from mlscale.models import model_spec

        model_spec(arch)


def _prepare_data(dataset: str, root: str | None) -> None:
    """Prepare a built-in dataset under the data root; when that writes it (a new root, or
    a mistyped --root), say where and how much on stderr, in one line."""
    from pathlib import Path

    from mlscale.data import prepare
    from mlscale.names import split_source

    if split_source(dataset) is not None:  # a user source is read where it is
        return
    result = prepare(dataset, root)
    if result.source == "existing":
        return
    folder = Path(result.raw_dir).resolve()
    size = sum(path.stat().st_size for path in folder.iterdir() if path.is_file())
    click.echo(f"prepared {dataset} in {folder.parent} ({size / 1e6:.0f} MB, from "
               f"{result.source})", err=True)


def _plural(count: float, word: str) -> str:
    """``1 thread``, ``2 threads``, ``1.5 epochs``."""
    return f"{count:g} {word}{'' if count == 1 else 's'}"
