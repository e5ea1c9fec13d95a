"""``mlscale models`` and ``mlscale ui``: the registry as a table and in the MLflow UI."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

from mlscale.cli._base import (
    _DatasetType,
    _print_json,
    cli,
    json_option,
    tracking_option,
)
from mlscale.cost_card import CostCard
from mlscale.errors import MlscaleError

if TYPE_CHECKING:
    import pandas as pd

    from mlscale.registry import MlflowSettings


@cli.command()
@click.option("--dataset", type=_DatasetType(registry_names=True), default=None,
              help="Only this dataset's models: a built-in name, a source (npz:PATH, ...) or "
                   "its registry name (npz-STEM, ...); the data need not be there.")
@click.option("--arch", default=None, help="Only this architecture's models (a user family "
                                           "as module:builder or module.builder).")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV.")
@tracking_option
@json_option
def models(dataset: str | None, arch: str | None, as_csv: bool, tracking_uri: str | None,
           as_json: bool) -> None:
    """One row per registered model version with its cost card, best accuracy first."""
    from mlscale.registry import frame_to_json, load_settings, models_frame

    if as_csv and as_json:
        raise MlscaleError("choose one of --json and --csv")
    if arch is not None and not set(":.") & set(arch):
        _check_zoo_name(arch)
    settings = load_settings(tracking_uri, create=False)
    frame = models_frame(settings, dataset=dataset, arch=arch)
    if frame.empty:
        _check_registered_names(settings, dataset, arch)
    if as_json:
        _print_json(frame_to_json(frame))
    elif as_csv:
        click.echo(frame.to_csv(index=False), nl=False)
    else:
        _print_models_table(frame)


def _check_zoo_name(arch: str) -> None:
    """A family named without a module path is the zoo's or an entry point's: known by name
    before the store opens, and without importing any user code."""
    from mlscale.models import list_models

    if arch not in list_models():
        raise MlscaleError(f"unknown architecture {arch!r}; choose one of: "
                           f"{', '.join(list_models())}, or a user family as module:builder")


def _check_registered_names(settings: MlflowSettings, dataset: str | None,
                            arch: str | None) -> None:
    """A registry name that matched nothing (``npz-STEM``, ``module.builder``) and that no
    version carries is a typo: an error rather than an empty table. Sources and import
    paths are not checked: their files and code are not read."""
    from mlscale.names import arch_name, is_dataset_name
    from mlscale.registry import models_frame

    registered = models_frame(settings)
    if dataset is not None and is_dataset_name(dataset):
        known = sorted(set(registered["dataset"].dropna()))
        if dataset not in known:
            raise MlscaleError(f"no registered model has the dataset {dataset!r} (registered: "
                               f"{', '.join(known) or 'none'})")
    if arch is not None and ":" not in arch and "." in arch:
        known = sorted(set(registered["arch"].dropna().map(arch_name)))
        if arch not in known:
            raise MlscaleError(f"no registered model has the architecture {arch!r} "
                               f"(registered: {', '.join(known) or 'none'})")


def _print_models_table(frame: pd.DataFrame) -> None:
    from rich.console import Console
    from rich.table import Table

    from mlscale.latency import DEFAULT_BATCH_SIZES

    # versions registered before the batch was recorded were timed at the largest default
    frame = frame.assign(throughput_batch=frame["throughput_batch_size"].fillna(
        max(DEFAULT_BATCH_SIZES)).astype(int))
    batches = set(frame["throughput_batch"])
    table = Table(title=f"registered models ({len(frame)} versions; FLOPs = 2 x MACs)")
    throughput = (f"samples/s @ batch {batches.pop()}", "throughput", "{:,.0f}") \
        if len(batches) == 1 else ("samples/s @ batch", "throughput", "{:,.0f}")
    columns = [("model", "model_uri", "{}"), ("alias", "aliases", "{}"),
               ("width", "width", "{:g}"), ("depth", "depth", "{:.0f}"),
               *map(CostCard.column, ("params", "flops_per_sample", "train_size",
                                      "train_flops", "train_time_s", "test_accuracy",
                                      "test_loss", "latency_p50_ms", "latency_p90_ms")),
               throughput]
    for header, _, _ in columns:
        table.add_column(header, justify="left" if header in ("model", "alias") else "right",
                         no_wrap=header == "model")
    for row in frame.to_dict("records"):
        cells = ["" if row[key] is None or row[key] != row[key] else fmt.format(row[key])
                 for _, key, fmt in columns]
        if len(batches) > 1 and cells[-1]:  # versions timed at different batches
            cells[-1] += f" @ {row['throughput_batch']}"
        table.add_row(*cells)
    console = Console()
    if not console.is_terminal:  # piped: every column in full rather than at 80
        console = Console(width=200)
    console.print(table)


@cli.command()
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@tracking_option
def ui(port: int, tracking_uri: str | None) -> None:
    """Start the MLflow UI on 127.0.0.1 against the configured store."""
    import subprocess

    from mlscale.registry import load_settings

    settings = load_settings(tracking_uri, create=False)
    if settings.tracking_uri.startswith(("http://", "https://")):
        _point_at_server_ui(settings)
        return
    _check_ui_args(settings.tracking_uri, port)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", settings.tracking_uri,
               "--registry-store-uri", settings.registry_uri or settings.tracking_uri,
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--uvicorn-opts", "--log-level warning"]
    # MLflow's start-up notes and a deprecation warning it triggers are not for a user
    # who asked for the UI: warnings and errors still show.
    quiet = os.environ | {"MLFLOW_LOGGING_LEVEL": "WARNING",
                          "PYTHONWARNINGS": "ignore::UserWarning:mlflow.server.fastapi_app"}
    click.echo(f"MLflow UI for {settings.tracking_uri}: http://127.0.0.1:{port}/#/models "
               "(Ctrl-C stops it)", err=True)
    try:
        code = subprocess.call(command, env=quiet)
    except KeyboardInterrupt:
        code = 0
    if code:
        raise MlscaleError(f"the MLflow UI exited with status {code} (is port {port} free?)")


def _point_at_server_ui(settings: MlflowSettings) -> None:
    """An MLflow tracking server serves the UI itself: check that it answers, say where."""
    from mlscale.registry import client, mlflow_errors

    with mlflow_errors(settings):
        client(settings).search_experiments(max_results=1)
    click.echo(f"The MLflow server {settings.tracking_uri} serves the UI itself: open "
               f"{settings.tracking_uri.rstrip('/')}/#/models", err=True)


def _check_ui_args(tracking_uri: str, port: int) -> None:
    """A malformed store URI or a port in use fails here, before the UI server starts."""
    import socket

    from mlscale.registry import check_uri_scheme

    check_uri_scheme(tracking_uri)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            raise MlscaleError(f"port {port} on 127.0.0.1 is not free ({error.strerror}); "
                               "pass --port with another") from None
