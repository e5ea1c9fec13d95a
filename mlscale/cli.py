"""The ``mlscale`` command line: one click group per domain on a root group.

Heavy libraries are imported inside the commands, so ``mlscale --help`` is instant.
Every error reaches the user as one line on stderr with a non-zero exit.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from mlscale.checks import PositiveNumber
from mlscale.errors import MlscaleError

if TYPE_CHECKING:
    from mlscale.registry import MlflowSettings

DATASET_NAMES = ("mnist", "fashion-mnist")


class _DatasetType(click.Choice):
    """A built-in dataset name, or a user source ``npz:PATH``, ``imagefolder:PATH`` or
    ``torchvision:NAME`` (checked for form here, read by the command)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> Any:
        from mlscale.names import split_source

        if isinstance(value, str) and ":" in value:
            try:
                split_source(value)
            except MlscaleError as error:
                self.fail(str(error), param, ctx)
            return value
        return super().convert(value, param, ctx)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
dataset_option = click.option(
    "--dataset", type=_DatasetType(DATASET_NAMES), default="mnist", show_default=True,
    help="Dataset to use: a built-in name, npz:PATH, imagefolder:PATH or torchvision:NAME.",
)
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
    from mlscale.measure import measure_model
    from mlscale.models import get_model, list_models, model_spec

    if arch is None and (width is not None or depth is not None):
        raise MlscaleError("--width and --depth need --arch")
    info = dataset_info(dataset)
    rows = []
    for name in [arch] if arch else list_models():
        spec = model_spec(name)
        w, d = spec.resolve(width, depth)
        model = get_model(name, width=w, depth=d, in_channels=info.input_shape[0],
                          num_classes=info.num_classes, image_size=info.input_shape[1])
        cost = measure_model(model, info.input_shape, info.num_classes)
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


@cli.command("train")
@click.option("--arch", required=True, help="Architecture name (see `mlscale zoo`).")
@click.option("--width", type=float, default=None, help="Width multiplier (default: family's).")
@click.option("--depth", type=int, default=None, help="Depth dial (default: family's).")
@click.option("--epochs", type=click.IntRange(1), default=None,
              help="Passes over the training subset [3].")
@click.option("--max-train-flops", type=PositiveNumber(), default=None,
              help="Stop when this many training FLOPs are spent (instead of --epochs).")
@click.option("--train-size", type=int, default=None,
              help="Stratified training subset size (default: the whole train split).")
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help="Default: 256, less for small subsets (an epoch of at least 32 steps).")
@click.option("--lr", type=PositiveNumber(), default=None,
              help="Peak learning rate (default: the family's, see `mlscale zoo --json`).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto",
              show_default=True, help="auto: bf16 autocast where the hardware has it.")
@click.option("--no-register", is_flag=True, help="Log the MLflow run but register no version.")
@click.option("--latency-seconds", type=PositiveNumber(), default=0.25, show_default=True,
              help="ONNX Runtime timing per batch size (1, 32, 256).")
@dataset_option
@root_option
@tracking_option
@json_option
def train_command(arch: str, width: float | None, depth: int | None, epochs: int | None,
                  max_train_flops: float | None, train_size: int | None,
                  batch_size: int | None,
                  lr: float | None, seed: int, device: str, precision: str, no_register: bool,
                  latency_seconds: float, dataset: str, root: str | None,
                  tracking_uri: str | None, as_json: bool) -> None:
    """Train one model, export it to ONNX, time it, log it to MLflow and register it."""
    from mlscale.models import model_spec
    from mlscale.registry import load_settings
    from mlscale.train import EpochMetrics, Progress, TrainConfig, precision_warning
    from mlscale.workflow import train_and_register

    model_spec(arch)  # fail on an unknown name before loading any data
    config = TrainConfig(arch=arch, width=width, depth=depth, dataset=dataset,
                         train_size=train_size, epochs=epochs, max_train_flops=max_train_flops,
                         batch_size=batch_size, lr=lr, seed=seed, device=device,
                         precision=precision, data_root=root)
    config.validate()
    if warning := precision_warning(config):
        click.echo(f"Warning: {warning}", err=True)
    settings = load_settings(tracking_uri)
    status = _StatusLine()

    def on_progress(p: Progress) -> None:
        val = f"  val acc {p.last_val.val_accuracy:.2%}" if p.last_val else ""
        status.show(f"step {p.step}/{p.total_steps}  epoch {p.epoch:.2f}  "
                    f"loss {p.train_loss:.4f}{val}")

    def on_epoch(m: EpochMetrics) -> None:
        status.clear()
        if not as_json:
            click.echo(f"epoch {m.epoch:6.2f}  samples {m.samples_seen:>9,}  "
                       f"val loss {m.val_loss:.4f}  val acc {m.val_accuracy:.2%}")

    outcome = train_and_register(config, settings, register=not no_register,
                                 latency_seconds=latency_seconds, on_progress=on_progress,
                                 on_epoch=on_epoch)
    status.clear()
    if as_json:
        _print_json(outcome.to_dict())
        return
    result, batch1 = outcome.result, outcome.latency.at_batch(1)
    click.echo(
        f"{result.run_name}: test loss {result.test_loss:.4f} nats, "
        f"test accuracy {result.test_accuracy:.2%} (error {result.error_rate:.2%})\n"
        f"  {result.params:,} params, {result.samples_seen:,} samples seen, "
        f"{result.train_flops:.3e} training FLOPs (2 x MACs), {result.wall_time_s:.1f} s\n"
        f"  ONNX Runtime: p50 {batch1.p50_ms:.3f} ms, p90 {batch1.p90_ms:.3f} ms at batch 1; "
        f"{outcome.latency.largest_batch.throughput:,.0f} samples/s at batch "
        f"{outcome.latency.largest_batch.batch_size} ({outcome.latency.threads} threads)\n"
        f"  MLflow run {outcome.run_id}"
        + (f"; registered {outcome.version.model_uri}"
           + (" (champion)" if outcome.version.champion else "") if outcome.version else "")
    )


@cli.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--budget-flops", type=PositiveNumber(), default=None,
              help="Total training FLOPs (overrides the pipeline's budget_flops).")
@click.option("--storage", default=None, envvar="MLSCALE_STORAGE",
              help="Optuna storage URL (default: $MLSCALE_STORAGE, else "
                   "sqlite:///registry/optuna.db).")
@click.option("--study", "study_name", default=None, help="Study name (default: pipeline name).")
@click.option("--heartbeat", type=click.IntRange(1, 3600), default=10, show_default=True,
              help="Seconds between worker heartbeats; a trial silent for twice this "
                   "(at least 10 s) is failed.")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Worker processes on this machine, each with cores / N torch threads.")
@tracking_option
@json_option
def search(pipeline: str, budget_flops: float | None, storage: str | None,
           study_name: str | None, heartbeat: int, workers: int, tracking_uri: str | None,
           as_json: bool) -> None:
    """Search the zoo under a FLOPs budget as PIPELINE (a pipelines/*.yaml file) defines.

    Running the same command again resumes the study; start it N times (on N machines,
    with a shared --storage) for N workers.
    """
    from mlscale.pipeline import load_pipeline
    from mlscale.registry import load_settings
    from mlscale.search import SearchProgress, run_search
    from mlscale.train import Progress

    spec = load_pipeline(pipeline)
    if budget_flops is not None:
        spec = spec.with_budget(budget_flops)
    settings = load_settings(tracking_uri)
    if workers > 1:
        _search_in_workers(workers, pipeline, budget_flops, storage, study_name, heartbeat,
                           tracking_uri, as_json)
        return
    status = _StatusLine()
    ledger = {"line": f"budget {spec.budget_flops:.3g} FLOPs"}

    def on_training(p: Progress) -> None:
        status.show(f"{ledger['line']} | training: step {p.step}/{p.total_steps}, "
                    f"loss {p.train_loss:.4f}")

    def on_progress(p: SearchProgress) -> None:
        done = sum(p.trials.values())
        states = ", ".join(f"{n} {k.lower()}" for k, n in sorted(p.trials.items()))
        best = f"{p.best_value:.4f}" if p.best_value is not None else "-"
        ledger["line"] = (f"{done} trials ({states}) | FLOPs {p.flops_spent:.3g} / "
                          f"{p.budget_flops:.3g} | best val loss {best}")
        status.clear()
        if not as_json:
            click.echo(p.message)
        status.show(ledger["line"])

    from mlscale._signals import Interrupted, stop_on_signals

    try:
        with stop_on_signals():
            summary = run_search(spec, settings, storage=storage, study_name=study_name,
                                 heartbeat_interval=heartbeat, on_progress=on_progress,
                                 on_training=on_training)
    except Interrupted as stop:
        status.clear()
        raise _Stopped.by_signal(stop) from None
    status.clear()
    if as_json:
        _print_json(summary.to_dict())
        return
    _print_search_summary(summary)


def _search_in_workers(workers: int, pipeline: str, budget_flops: float | None,
                       storage: str | None, study_name: str | None, heartbeat: int,
                       tracking_uri: str | None, as_json: bool) -> None:
    from mlscale._local_workers import run_workers

    args = [pipeline, "--heartbeat", str(heartbeat)]
    for flag, value in (("--budget-flops", budget_flops), ("--storage", storage),
                        ("--study", study_name), ("--tracking-uri", tracking_uri)):
        if value is not None:
            args += [flag, repr(value) if isinstance(value, float) else value]
    code, outputs = run_workers(workers, args + (["--json"] if as_json else []), as_json)
    if as_json:
        _print_json({"workers": [json.loads(out) if out.strip() else None
                                 for out in outputs], "exit_code": code})
    if code:
        raise _Stopped(code, f"a worker of {workers} failed (exit status {code}); running the "
                             "same command again resumes the study")


class _Stopped(MlscaleError):
    """A search stopped (by a signal: 128 + its number) or a worker that did: one line."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    @classmethod
    def by_signal(cls, stop: Any) -> _Stopped:
        return cls(stop.exit_code, f"{stop}: a running trial is FAIL (interrupted) and its "
                                   "run KILLED; run the same command again to resume")


def _print_search_summary(summary: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    states = ", ".join(f"{n} {k.lower()}" for k, n in sorted(summary.n_trials.items()))
    console.print(f"study {summary.study}: {states}; spent {summary.flops_spent:.4g} of "
                  f"{summary.budget_flops:.4g} training FLOPs (FLOPs = 2 x MACs)")
    for title, rows in (("best per family", summary.best_per_family),
                        ("Pareto front (val loss vs batch-1 p90 latency)", summary.pareto_front)):
        if not rows:
            continue
        table = Table(title=title)
        for column in ("trial", "model", "val loss", "test acc", "params", "train FLOPs",
                       "p90 ms", "registered"):
            table.add_column(column, justify="left" if column in ("model", "registered")
                             else "right")
        for row in rows:
            m = row["metrics"]
            table.add_row(str(row["trial"]), row["run_name"] or "", f"{m['val_loss']:.4f}",
                          f"{m['test_accuracy']:.2%}", f"{m['params']:,}",
                          f"{m['train_flops']:.3g}", f"{m['latency_p90_ms']:.3f}",
                          row["model_uri"] or "")
        console.print(table)
    if summary.best:
        console.print(f"best: {summary.best['run_name']} -> {summary.best['model_uri']}")
    console.print(f"plots and summary logged to MLflow run {summary.parent_run_id}; "
                  "browse with `mlscale ui`")


@cli.command()
@click.option("--experiment", default=None, help="Fit the finished runs of this MLflow experiment.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="Fit the rows of this CSV instead.")
@click.option("--n-col", default=None, help="CSV column of model size N.")
@click.option("--d-col", default=None,
              help="CSV column of data size D (default: C / (k N) when N and C are given).")
@click.option("--c-col", default=None,
              help="CSV column of training compute C (default: k N D when N and D are given).")
@click.option("--u-col", default=None,
              help="CSV column of unique samples per run: runs that repeated their data are "
                   "fitted on effective data D'.")
@click.option("--loss-col", default="loss", show_default=True, help="CSV column of the loss.")
@click.option("--law", type=click.Choice(["n", "d", "nd", "c"]), default="nd", show_default=True)
@click.option("--target", type=click.Choice(["test_loss", "error_rate"]), default="test_loss",
              show_default=True, help="What the registry fit explains.")
@click.option("--arch", default=None, help="Only this architecture's runs (registry fits).")
@click.option("--drop-top", type=click.IntRange(0), default=0, show_default=True,
              help="Leave out the K highest-loss points.")
@click.option("--bootstrap", type=click.IntRange(0), default=0, show_default=True,
              help="Bootstrap resamples for the intervals (0: from the fit's covariance).")
@click.option("--k", "k", type=PositiveNumber(), default=None,
              help="Training FLOPs per parameter per sample (default: measured, else 6).")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False), default=None,
              help="Write PNG plots here.")
@tracking_option
@json_option
def fit(experiment: str | None, csv_path: str | None, n_col: str | None, d_col: str | None,
        c_col: str | None, u_col: str | None, loss_col: str, law: str, target: str,
        arch: str | None, drop_top: int, bootstrap: int, k: float | None, plot_dir: str | None,
        tracking_uri: str | None, as_json: bool) -> None:
    """Fit a scaling law to registered runs (--experiment) or to a CSV, with intervals.

    Laws: n: L_inf + A N^-alpha; d: L_inf + B D^-beta; nd: E + A/N^alpha + B/D^beta;
    c: L_inf + K C^-gamma along the compute frontier. Prints the parameters with 95%
    intervals, goodness of fit and an extrapolation check (fit on the lower 80% of
    compute, error on the top 20%); fits of registry runs are logged to MLflow.
    """
    import tempfile

    from mlscale.registry import load_settings
    from mlscale.scaling import fit_points, log_fit, points_from_csv, points_from_experiment

    if (experiment is None) == (csv_path is None):
        raise MlscaleError("give exactly one of --experiment and --csv")
    if csv_path is not None:
        points = points_from_csv(csv_path, n_col=n_col, d_col=d_col, c_col=c_col,
                                 u_col=u_col, loss_col=loss_col, k=k)
    else:
        _check_names(None, arch)
        settings = load_settings(tracking_uri, create=False)
        points = points_from_experiment(settings, str(experiment), target=target, arch=arch)
    with tempfile.TemporaryDirectory() as scratch:
        report = fit_points(points, law, target=target, drop_top=drop_top, bootstrap=bootstrap,
                            k=k, plot_dir=plot_dir or (scratch if experiment else None))
        if experiment is not None:
            report.mlflow_run_id = log_fit(report, settings, str(experiment), {
                "drop_top": drop_top, "bootstrap": bootstrap, "arch": arch or "all"})
        if not plot_dir:
            report.plots = []
    if as_json:
        _print_json(report.to_dict())
        return
    click.echo(report.summary)
    for role, formula in report.derived.items():
        click.echo(f"{role} was not a column: {formula}")
    if report.compute_optimal:
        co = report.compute_optimal
        click.echo(f"compute-optimal (C = {co['k']:.3g} N D): N_opt ~ C^{co['a']:.3f} "
                   f"[{co['a_interval'][0]:.3f}, {co['a_interval'][1]:.3f}], "
                   f"D_opt ~ C^{co['b']:.3f}")
    if report.extrapolation:
        ex = report.extrapolation
        click.echo(f"extrapolation: fit on {ex['fit_points']} points, held out the "
                   f"{ex['held_out_points']} with {ex['axis']} >= {ex['held_out_from']:.3g}: "
                   f"mean |error| {ex['mean_abs_pct_error']:.2f}%, max "
                   f"{ex['max_abs_pct_error']:.2f}%")
    for warning in report.warnings:
        click.echo(f"warning: {warning}")
    for path in report.plots:
        click.echo(f"plot: {path}")
    if report.mlflow_run_id:
        click.echo(f"logged to MLflow run {report.mlflow_run_id}")


@cli.command()
@click.option("--flops", type=float, default=None,
              help="Training budget in FLOPs (FLOPs = 2 x MACs), e.g. 1e15.")
@click.option("--target-accuracy", type=float, default=None,
              help="Instead of --flops: the least budget predicted to reach this accuracy.")
@dataset_option
@click.option("--families", default=None,
              help="Comma-separated families to consider (default: every fitted family).")
@click.option("--max-latency-ms", type=float, default=None,
              help="Only configurations predicted to serve within this p90 (batch 1).")
@click.option("--refresh", is_flag=True, help="Refit even if the registry has not changed.")
@tracking_option
@json_option
def budget(flops: float | None, target_accuracy: float | None, dataset: str,
           families: str | None, max_latency_ms: float | None, refresh: bool,
           tracking_uri: str | None, as_json: bool) -> None:
    """What to train for a FLOPs budget: family, dials, data, and the predicted test loss,
    accuracy and latency with 95% intervals, from scaling laws fitted to the registry."""
    from mlscale.budget import Advisor, check_positive, check_target
    from mlscale.registry import load_settings

    if (flops is None) == (target_accuracy is None):
        raise MlscaleError("give exactly one of --flops and --target-accuracy")
    if flops is not None:  # bad input fails before the registry is read
        check_positive(flops, "--flops")
    else:
        check_target(target_accuracy)  # type: ignore[arg-type]
    if max_latency_ms is not None:
        check_positive(max_latency_ms, "--max-latency-ms")
    chosen = [name.strip() for name in families.split(",") if name.strip()] if families else None
    status = _StatusLine()
    try:
        advisor = Advisor.from_registry(load_settings(tracking_uri, create=False), dataset,
                                        refresh=refresh, on_status=status.show)
    finally:
        status.clear()
    if flops is not None:
        advice = advisor.advise(flops, families=chosen, max_latency_ms=max_latency_ms)
    else:
        assert target_accuracy is not None
        advice = advisor.least_flops(target_accuracy, families=chosen,
                                     max_latency_ms=max_latency_ms)
    if as_json:
        _print_json(advice.to_dict())
    else:
        _print_advice(advice)


def _estimate_text(estimate: Any, fmt: str) -> str:
    if estimate is None:
        return "not predicted"
    text = fmt.format(estimate.value)
    if estimate.lower is not None:
        text += f" [{fmt.format(estimate.lower)}, {fmt.format(estimate.upper)}]"
    return text


def _option_lines(option: Any, indent: str = "  ") -> list[str]:
    return [
        f"{option.family} width {option.width:g} depth {option.depth}: {option.params:,} "
        f"params, {option.samples_seen:,} samples seen ({option.epochs:.3g} epochs), "
        f"{option.train_flops:.3g} training FLOPs",
        f"{indent}test loss {_estimate_text(option.predicted_test_loss, '{:.4f}')}   "
        f"accuracy {_estimate_text(option.predicted_accuracy, '{:.2%}')}   "
        f"p90 latency {_estimate_text(option.predicted_latency_p90_ms, '{:.3g}')} ms"
        + (f" (batch 1, {option.latency_threads} threads)" if option.latency_threads else ""),
    ]


def _print_advice(advice: Any) -> None:
    option = advice.recommendation
    asked = (f"the least budget predicted to reach {advice.target_accuracy:.2%}: "
             if advice.target_accuracy is not None else "")
    fitted = ", ".join(f"{name} ({fit['runs']} runs)" for name, fit in advice.fits.items())
    click.echo(f"Budget: {asked}{advice.budget_flops:.3g} training FLOPs on {advice.dataset} "
               f"(FLOPs = 2 x MACs); fits from {advice.registry['versions']} registered "
               f"models: {fitted}")
    if advice.max_latency_ms is not None:
        click.echo(f"Limit: p90 latency <= {advice.max_latency_ms:g} ms at batch 1")
    first, second = _option_lines(option)
    click.echo(f"Recommended: {first}")
    click.echo(f"  predicted (95% intervals): {second.strip()}")
    near = advice.nearest_registered_model
    click.echo(f"  nearest registered model: {near['model_uri']} ({near['run_name']}: "
               f"{near['params']:,.0f} params, {near['train_flops']:.3g} FLOPs, "
               f"test accuracy {near['test_accuracy']:.2%}, loss {near['test_loss']:.4f})")
    click.echo(f"  train it: {advice.train_command}")
    ranking = advice.verdict.get("ranking", [])
    if len(ranking) > 1:
        click.echo("Ranking (predicted test loss, accuracy): " + "; ".join(
            f"{i}. {r['family']} {r['predicted_test_loss']:.4f}, {r['predicted_accuracy']:.2%}"
            + ("" if r["ranked"] else " (weak fit)") for i, r in enumerate(ranking, 1)))
        click.echo(f"Verdict: {advice.verdict_line}")
    if advice.alternatives:
        click.echo("Alternatives:")
        for alt in advice.alternatives:
            first, second = _option_lines(alt["option"], "    ")
            click.echo(f"  {alt['kind']} ({alt['why']}): {first}")
            click.echo(second)
    if advice.warnings:
        click.echo("Warnings:")
        for warning in advice.warnings:
            click.echo(f"  - {warning}")
    skipped = advice.registry["families_without_fit"]
    if skipped:
        click.echo("Not fitted: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))


@cli.group()
def report() -> None:
    """Reports over the registry."""


@report.command("latency")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="reports/latency",
              show_default=True, help="Folder for the HTML page, the Markdown and the plots.")
@click.option("--models", "models", multiple=True,
              help="NAME, models:/NAME/VERSION or models:/NAME@ALIAS; repeat or comma-separate "
                   "(default: every registered version).")
@click.option("--dataset", default=None, help="Only this dataset's models.")
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
@click.option("--families", default=None, help="Comma-separated families (default: all).")
@click.option("--dataset", type=_DatasetType(DATASET_NAMES), default="mnist", show_default=True,
              help="Dataset of the registered models (not used with --experiment): a built-in "
                   "name, npz:PATH, imagefolder:PATH or torchvision:NAME.")
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
              help="ONNX Runtime and torch threads (default: the cores available).")
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
        onnx_model, torch_model = load_registered_onnx(model, load_settings(tracking_uri,
                                                                            create=False))
    else:
        onnx_model, torch_model = _onnx_file(model), None
    input_shape = _onnx_input_shape(onnx_model)
    report = benchmark_onnx(onnx_model, input_shape, batch_sizes=sizes, threads=threads,
                            iterations=iterations, seconds=seconds, torch_model=torch_model)
    if as_json:
        _print_json({"model": model, **report.to_dict()})
        return
    click.echo(report.markdown(), nl=False)
    if torch_model is None:
        click.echo("torch eager: not measured (a bare ONNX file carries no torch model)")


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


@cli.command()
@click.option("--dataset", default=None, help="Only this dataset's models.")
@click.option("--arch", default=None, help="Only this architecture's models.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV.")
@tracking_option
@json_option
def models(dataset: str | None, arch: str | None, as_csv: bool, tracking_uri: str | None,
           as_json: bool) -> None:
    """One row per registered model version with its cost card, best accuracy first."""
    from mlscale.registry import frame_to_json, load_settings, models_frame

    if as_csv and as_json:
        raise MlscaleError("choose one of --json and --csv")
    _check_names(dataset, arch)
    frame = models_frame(load_settings(tracking_uri, create=False), dataset=dataset, arch=arch)
    if as_json:
        _print_json(frame_to_json(frame))
    elif as_csv:
        click.echo(frame.to_csv(index=False), nl=False)
    else:
        _print_models_table(frame)


def _check_names(dataset: str | None, arch: str | None) -> None:
    """An unknown dataset or architecture is an error, not an empty table."""
    from mlscale.data import dataset_info
    from mlscale.models import model_spec

    if dataset is not None:
        dataset_info(dataset)
    if arch is not None:
        model_spec(arch)


def _print_models_table(frame: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"registered models ({len(frame)} versions; FLOPs = 2 x MACs)")
    columns = [("model", "model_uri", "{}"), ("alias", "aliases", "{}"),
               ("params", "params", "{:,.0f}"), ("FLOPs/sample", "flops_per_sample", "{:,.0f}"),
               ("train FLOPs", "train_flops", "{:.3g}"), ("test acc", "test_accuracy", "{:.2%}"),
               ("test loss", "test_loss", "{:.4f}"), ("p50 ms", "latency_p50_ms", "{:.3f}"),
               ("p90 ms", "latency_p90_ms", "{:.3f}"), ("samples/s", "throughput", "{:,.0f}")]
    for header, _, _ in columns:
        table.add_column(header, justify="left" if header in ("model", "alias") else "right")
    for row in frame.to_dict("records"):
        table.add_row(*("" if row[key] is None or row[key] != row[key] else fmt.format(row[key])
                        for _, key, fmt in columns))
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
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
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    click.echo(f"MLflow UI for {settings.tracking_uri}: http://127.0.0.1:{port}/#/models "
               "(Ctrl-C stops it)", err=True)
    try:
        code = subprocess.call(command)
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


def _attach_groups() -> None:
    from mlscale.cli_servers import servers_group

    cli.add_command(servers_group)


_attach_groups()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the CLI and turn every error into one line and a non-zero exit."""
    try:
        code = cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Error: aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        click.echo(f"Error: {error.format_message()}", err=True)
        sys.exit(error.exit_code)
    except _Stopped as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(error.exit_code)
    except MlscaleError as error:
        click.echo(f"Error: {_one_line(str(error))}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Error: interrupted", err=True)
        sys.exit(130)
    except Exception as error:  # a defect, not bad input: still one line and a non-zero exit
        click.echo(f"Error: unexpected {type(error).__name__}: {_one_line(str(error))} "
                   "(please report this)", err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "no details"
