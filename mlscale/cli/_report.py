"""``mlscale report latency|scaling`` and ``mlscale latency``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from mlscale.checks import PositiveNumber
from mlscale.cli._base import (
    _check_names,
    _print_json,
    cli,
    dataset_choice,
    json_option,
    tracking_option,
)
from mlscale.errors import MlscaleError

if TYPE_CHECKING:
    from mlscale.registry import MlflowSettings


@cli.group()
def report() -> None:
    """Reports over the registry."""


@report.command("latency")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="reports/latency",
              show_default=True, help="Folder for the HTML page, the Markdown and the plots.")
@click.option("--models", "models", multiple=True,
              help="NAME, models:/NAME/VERSION or models:/NAME@ALIAS; repeat or comma-separate "
                   "(default: every registered version).")
@dataset_choice(default=None, help="Only this dataset's models.")
@click.option("--no-log", is_flag=True, help="Do not log the report to MLflow.")
@tracking_option
@json_option
def report_latency(out_dir: str, models: tuple[str, ...], dataset: str | None, no_log: bool,
                   tracking_uri: str | None, as_json: bool) -> None:
    """What each registered model costs to serve: latency percentiles at every batch size,
    throughput, torch vs ONNX Runtime, accuracy against latency and FLOPs with the Pareto
    front; as self-contained HTML and Markdown, logged to MLflow."""
    from mlscale.registry import load_settings
    from mlscale.report import latency_report

    _check_names(dataset, None)
    names = [name.strip() for spec in models for name in spec.split(",") if name.strip()]
    result = latency_report(load_settings(tracking_uri, create=False), out_dir,
                            models=names or None, dataset=dataset, log=not no_log)
    if as_json:
        _print_json({"html": str(result.html), "markdown": str(result.markdown),
                     "plots": [str(p) for p in result.plots], "models": result.models,
                     "mlflow_run_id": result.mlflow_run_id})
        return
    click.echo(f"latency report of {result.models} models: {result.html.resolve()}")
    click.echo(f"markdown: {result.markdown.resolve()}")
    if result.mlflow_run_id:
        click.echo(f"logged to MLflow run {result.mlflow_run_id} (experiment mlscale-reports)")


@report.command("scaling")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="reports/scaling",
              show_default=True, help="Folder for the HTML page, the Markdown and the plots.")
@click.option("--experiment", default=None,
              help="Finished runs of this MLflow experiment (default: the registered models).")
@click.option("--families", "--arch", "families", default=None,
              help="Comma-separated families (default: all).")
@dataset_choice(help="Dataset of the registered models (not used with --experiment): a "
                    "built-in name, npz:PATH, imagefolder:PATH or torchvision:NAME.")
@click.option("--no-log", is_flag=True, help="Do not log the report to MLflow.")
@tracking_option
@json_option
def report_scaling(out_dir: str, experiment: str | None, families: str | None,
                   dataset: str, no_log: bool, tracking_uri: str | None,
                   as_json: bool) -> None:
    """How each family scales: L(N), L(D), L(N, D) with bands and exponents, saturation and
    regimes, the compute frontier, LeNet-5's parameter efficiency, law selection by AIC/BIC;
    as self-contained HTML and Markdown, logged to MLflow."""
    from mlscale.registry import load_settings
    from mlscale.report import print_summary, scaling_report

    given = click.get_current_context().get_parameter_source("dataset")
    if experiment is not None and given is not click.core.ParameterSource.DEFAULT:
        raise MlscaleError("give --experiment or --dataset, not both: an experiment's runs "
                           "are all the report reads")
    chosen = [name.strip() for name in families.split(",") if name.strip()] if families else None
    result = scaling_report(load_settings(tracking_uri, create=False), out_dir,
                            experiment=experiment,
                            dataset=dataset, families=chosen, log=not no_log)
    if as_json:
        _print_json(result.to_dict())
    else:
        print_summary(result)


def _parse_batch_sizes(text: str) -> tuple[int, ...]:
    from mlscale.latency import check_batch_sizes

    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise MlscaleError(
            f"--batch-sizes must be comma-separated integers, got '{text}'"
        ) from None
    check_batch_sizes(sizes)  # before a model is loaded
    return sizes


@cli.command()
@click.argument("model")
@click.option("--batch-sizes", default="1,32,256", show_default=True,
              help="Comma-separated batch sizes.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="ONNX Runtime and torch threads (default: torch's thread count, which "
                   "OMP_NUM_THREADS sets; what training runs on).")
@click.option("--iterations", type=click.IntRange(1), default=None,
              help="Timed runs per batch size.")
@click.option("--seconds", type=PositiveNumber(), default=None,
              help="Seconds of timed runs per batch size [default 1].")
@tracking_option
@json_option
def latency(model: str, batch_sizes: str, threads: int | None, iterations: int | None,
            seconds: float | None, tracking_uri: str | None, as_json: bool) -> None:
    """Time MODEL (an .onnx file or models:/NAME/VERSION, models:/NAME@ALIAS) in ONNX Runtime."""
    from mlscale.latency import benchmark_onnx
    from mlscale.registry import load_registered_onnx, load_settings

    sizes = _parse_batch_sizes(batch_sizes)
    if iterations is None and seconds is None:
        seconds = 1.0
    onnx_model: bytes | str
    if model.startswith("models:/"):
        settings = load_settings(tracking_uri, create=False)
        _check_registered(model, settings)
        onnx_model, torch_model = load_registered_onnx(model, settings)
    else:
        onnx_model, torch_model = _onnx_file(model), None
    input_shape = _onnx_input_shape(onnx_model)
    report = benchmark_onnx(onnx_model, input_shape, batch_sizes=sizes, threads=threads,
                            iterations=iterations, seconds=seconds, torch_model=torch_model)
    if report.busy_warning:
        click.echo(f"Warning: {report.busy_warning}", err=True)
    if as_json:
        _print_json({"model": model, **report.to_dict()})
        return
    click.echo(report.markdown(), nl=False)
    if torch_model is None:
        click.echo("torch eager: not measured (a bare ONNX file carries no torch model)")


def _check_registered(uri: str, settings: MlflowSettings) -> None:
    """Name what a ``models:/`` URI asks for that the registry lacks (the model, the
    version, the alias), rather than report it as a failing store."""
    from mlflow.exceptions import MlflowException

    from mlscale.registry import ModelRef, client, mlflow_errors

    ref = ModelRef.parse(uri)
    mlflow_client = client(settings)
    with mlflow_errors(settings):
        try:
            registered = mlflow_client.get_registered_model(ref.name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise MlscaleError(f"no registered model named '{ref.name}' (`mlscale models` "
                               "lists them)") from None
        if ref.alias is not None and ref.alias not in (registered.aliases or {}):
            known = ", ".join(sorted(registered.aliases or {})) or "none"
            raise MlscaleError(f"no version of {ref.name} has the alias '{ref.alias}' "
                               f"(its aliases: {known})")
        if ref.version is not None:
            try:
                mlflow_client.get_model_version(ref.name, ref.version)
            except MlflowException as error:
                if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                raise MlscaleError(f"{ref.name} has no version {ref.version} (`mlscale "
                                   "models` lists its versions)") from None


def _onnx_file(path: str) -> str:
    """The absolute path of a readable ONNX file: ONNX Runtime loads weights stored as
    external data (as MLflow saves them) from the model file's folder, not the cwd."""
    from pathlib import Path

    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise MlscaleError(f"cannot read ONNX file {path}: {error.strerror}") from None
    return str(Path(path).resolve())


def _onnx_input_shape(onnx_model: bytes | str) -> tuple[int, ...]:
    """The per-sample input shape of an ONNX model (its first input, less the batch axis)."""
    from mlscale.export import ort_session

    shape = ort_session(onnx_model).get_inputs()[0].shape[1:]
    if not all(isinstance(dim, int) for dim in shape):
        raise MlscaleError(f"the model's input has non-fixed dimensions {shape}")
    return tuple(shape)
