"""``mlscale fit``: a scaling law fitted to registry runs or a CSV."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mlscale.checks import PositiveNumber
from mlscale.cli._base import (
    _check_names,
    _print_json,
    cli,
    json_option,
    tracking_option,
)
from mlscale.errors import MlscaleError

if TYPE_CHECKING:
    import pandas as pd

    from mlscale.registry import MlflowSettings
    from mlscale.scaling import FitReport


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
    compute, error on the top 20%); fits of registry runs are logged to MLflow. Runs of
    several architectures, without --arch, are fitted one family at a time (a law over
    mixed families describes none of them); --json then gives {"families": {name: fit}}.
    """
    from mlscale.registry import load_settings
    from mlscale.scaling import points_from_csv, points_from_experiment

    if (experiment is None) == (csv_path is None):
        raise MlscaleError("give exactly one of --experiment and --csv")
    if csv_path is not None:
        points = points_from_csv(csv_path, n_col=n_col, d_col=d_col, c_col=c_col,
                                 u_col=u_col, loss_col=loss_col, k=k)
        report = _fit_one(points, law, target, drop_top, bootstrap, k, plot_dir, None)
        _show(report, as_json)
        return
    _check_names(None, arch)
    settings = load_settings(tracking_uri, create=False)
    points = points_from_experiment(settings, str(experiment), target=target, arch=arch)
    families = sorted(points["arch"].dropna().astype(str).unique())
    logged = (settings, str(experiment), {"drop_top": drop_top, "bootstrap": bootstrap,
                                          "arch": arch or "all"})
    if arch is not None or len(families) < 2:
        _show(_fit_one(points, law, target, drop_top, bootstrap, k, plot_dir, logged), as_json)
        return
    reports: dict[str, FitReport | str] = {}
    for family in families:
        runs = points[points["arch"] == family].reset_index(drop=True)
        runs.attrs = dict(points.attrs)
        try:
            reports[family] = _fit_one(
                runs, law, target, drop_top, bootstrap, k,
                None if plot_dir is None else str(Path(plot_dir) / family),
                (settings, str(experiment), {**logged[2], "arch": family}))
        except MlscaleError as error:
            reports[family] = f"not fitted: {error}"
    if all(isinstance(r, str) for r in reports.values()):
        raise MlscaleError(f"no family of experiment {experiment!r} could be fitted: "
                           + "; ".join(f"{name}: {why}" for name, why in reports.items()))
    if as_json:
        _print_json({"experiment": experiment, "law": law, "families": {
            name: {"error": r} if isinstance(r, str) else r.to_dict()
            for name, r in reports.items()}})
        return
    click.echo(f"The runs of experiment {experiment!r} hold {len(families)} architectures "
               f"({', '.join(families)}): each is fitted on its own (--arch NAME fits one)")
    for name, r in reports.items():
        count = int((points["arch"] == name).sum())
        click.echo(f"\n== {name} ({count} run{'s' if count != 1 else ''}) ==")
        if isinstance(r, str):
            click.echo(r)
        else:
            _show(r, False)


def _fit_one(points: pd.DataFrame, law: str, target: str, drop_top: int, bootstrap: int,
             k: float | None, plot_dir: str | None,
             logged: tuple[MlflowSettings, str, dict[str, Any]] | None) -> FitReport:
    """Fit ``points``; with ``logged`` (settings, experiment, options) log it to MLflow.
    Registry fits draw their plots in a scratch folder when no --plot is given."""
    import tempfile

    from mlscale.scaling import fit_points, log_fit

    with tempfile.TemporaryDirectory() as scratch:
        report = fit_points(points, law, target=target, drop_top=drop_top, bootstrap=bootstrap,
                            k=k, plot_dir=plot_dir or (scratch if logged else None))
        if logged is not None:
            report.mlflow_run_id = log_fit(report, *logged)
        if not plot_dir:
            report.plots = []
    return report


def _show(report: FitReport, as_json: bool) -> None:
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
