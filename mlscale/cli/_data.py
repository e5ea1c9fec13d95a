"""``mlscale data prepare`` and ``mlscale zoo``: the datasets and the model families."""

from __future__ import annotations

from typing import Any

import click

from mlscale.cli._base import (
    _print_json,
    cli,
    dataset_option,
    json_option,
    root_option,
)
from mlscale.errors import MlscaleError


@cli.group()
def data() -> None:
    """Prepare and verify datasets (offline first)."""


@data.command("prepare")
@dataset_option
@root_option
@click.option("--download", is_flag=True,
              help="torchvision:NAME only: let torchvision download missing files.")
@json_option
def data_prepare(dataset: str, root: str | None, download: bool, as_json: bool) -> None:
    """Write DATASET in torchvision's layout under the root and verify its MD5s; for a
    user source (npz:, imagefolder:, torchvision:), read and check it and say what it holds."""
    from dataclasses import asdict

    from mlscale.data import prepare
    from mlscale.names import split_source

    if split_source(dataset) is not None:
        _describe_source(dataset, root, download, as_json)
        return
    result = prepare(dataset, root)
    if as_json:
        _print_json(asdict(result))
        return
    click.echo(f"{result.dataset}: ready in {result.raw_dir} (source: {result.source})")
    for name, md5 in result.md5.items():
        click.echo(f"  {md5}  {name}  (official MD5 matches)")


def _describe_source(dataset: str, root: str | None, download: bool, as_json: bool) -> None:
    from mlscale.sources import load_source

    info = load_source(dataset, root, download=download).info
    described = {"dataset": dataset, "name": info.name, "input_shape": list(info.input_shape),
                 "num_classes": info.num_classes, "train_samples": info.train_samples,
                 "mean": info.mean, "std": info.std}
    if as_json:
        _print_json(described)
        return
    click.echo(f"{dataset}: {info.name}, {'x'.join(map(str, info.input_shape))} images, "
               f"{info.num_classes} classes, {info.train_samples:,} train samples "
               f"(pixel mean {info.mean:.4f}, std {info.std:.4f} on train)")


@cli.command()
@click.option("--arch", default=None, help="Measure one architecture (default: every family).")
@click.option("--width", type=float, default=None, help="Width multiplier (default: family's).")
@click.option("--depth", type=int, default=None, help="Depth dial (default: family's).")
@dataset_option
@json_option
def zoo(arch: str | None, width: float | None, depth: int | None, dataset: str,
        as_json: bool) -> None:
    """List the model families, or measure one model's params and FLOPs."""
    from mlscale.data import dataset_info
    from mlscale.measure import cost_of
    from mlscale.models import list_models, model_spec

    if arch is None and (width is not None or depth is not None):
        raise MlscaleError("--width and --depth need --arch")
    info = dataset_info(dataset)
    rows = []
    for name in [arch] if arch else list_models():
        spec = model_spec(name)
        w, d = spec.resolve(width, depth)
        cost = cost_of(name, w, d, info.input_shape, info.num_classes)
        rows.append({
            "arch": name, "width": w, "depth": d, "params": cost.params,
            "flops_per_sample": cost.flops_per_sample,
            "train_flops_per_sample": cost.train_flops_per_sample,
            "width_range": _open_range(spec.width_range),
            "depth_range": _open_range(spec.depth_range),
            "description": spec.description, "source": spec.source or None,
            "lr": spec.lr, "weight_decay": spec.weight_decay, "warmup_share": spec.warmup_share,
        })
    if as_json:
        _print_json(rows[0] if arch else rows)
        return
    _print_zoo_table(rows)


def _open_range(bounds: tuple[float, float]) -> list[float | None]:
    """A dial range for JSON: an upper end a user family leaves open is null."""
    from mlscale.models._user import UNBOUNDED_DEPTH

    return [bounds[0], bounds[1] if bounds[1] < UNBOUNDED_DEPTH else None]


def _print_zoo_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="mlscale zoo (FLOPs = 2 x MACs, per sample)")
    for column in ("arch", "width", "depth", "params", "forward FLOPs", "train FLOPs",
                   "width range", "depth range"):
        table.add_column(column, justify="left" if column == "arch" else "right")
    for row in rows:
        table.add_row(
            row["arch"], f"{row['width']:g}", str(row["depth"]), f"{row['params']:,}",
            f"{row['flops_per_sample']:,}", f"{row['train_flops_per_sample']:,}",
            *(f"{low:g}-{'any' if high is None else f'{high:g}'}"
              for low, high in (row["width_range"], row["depth_range"])),
        )
    console = Console()
    if not console.is_terminal:  # piped: print every column in full rather than at 80
        console = Console(width=140)
    console.print(table)
