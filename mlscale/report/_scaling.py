"""The scaling report: how each family scales, where it saturates, and which one a given
compute or parameter count should buy.

One self-contained HTML page (plots embedded) and a Markdown twin (plots beside it),
over the registry's models of a dataset or the finished runs of an MLflow experiment:
per family the laws L(N), L(D) and L(N, D) with 95% bands, exponents and compute-optimal
allocation with intervals, goodness of fit and the extrapolation check
(``mlscale.scaling``); across families the exponents side by side, the saturation picture
with three regimes located by a stated rule, the compute frontier, LeNet-5's accuracy at
equal parameters and equal FLOPs against each other family, and per family the power law
against a logarithmic law and a saturating exponential by AIC/BIC. Logged to MLflow.

>>> result = scaling_report(load_settings(), "reports/scaling")  # doctest: +SKIP
>>> result.html.name                                              # doctest: +SKIP
'scaling_report.html'
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlscale.errors import MlscaleError
from mlscale.report._page import log_report, out_folder, plot_style

if TYPE_CHECKING:
    import pandas as pd

    from mlscale.registry import MlflowSettings

__all__ = ["ScalingReportResult", "print_summary", "scaling_points", "scaling_report",
           "scaling_study"]

BASE_FAMILY = "lenet5"  # the inductive-bias baseline every other family is compared with
LAWS_SHOWN = ("n", "d", "nd")
POINT_COLUMNS = ["arch", "N", "D", "C", "loss", "accuracy", "unique", "k", "run"]


@dataclass(frozen=True)
class ScalingReportResult:
    """Where the report went, what it found (JSON-ready) and its MLflow run."""

    html: Path
    markdown: Path
    plots: list[Path]
    study: dict[str, Any]
    mlflow_run_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"html": str(self.html), "markdown": str(self.markdown),
                "plots": [str(p) for p in self.plots], "mlflow_run_id": self.mlflow_run_id,
                **self.study}


def scaling_points(settings: MlflowSettings, *, experiment: str | None = None,
                   dataset: str | None = None) -> tuple[pd.DataFrame, str]:
    """One row per run (``POINT_COLUMNS``) and a phrase saying where the rows came from:
    the registered models of ``dataset``, or the finished runs of ``experiment``."""
    import numpy as np

    from mlscale.registry import models_frame, no_models_message
    from mlscale.scaling import points_from_experiment

    if experiment is not None:
        points = points_from_experiment(settings, experiment).rename(columns={"run_id": "run"})
        source = f"finished runs of experiment {experiment!r} in {settings.tracking_uri}"
    else:
        frame = models_frame(settings, dataset=dataset)
        if frame.empty and dataset is not None:
            raise MlscaleError(no_models_message(settings, dataset))
        points = frame.rename(columns={"params": "N", "samples_seen": "D", "train_flops": "C",
                                       "test_loss": "loss", "test_accuracy": "accuracy",
                                       "train_size": "unique", "model_uri": "run"})
        points["k"] = points["C"] / (points["N"] * points["D"])
        source = (f"registered models{f' of {dataset}' if dataset else ''} in "
                  f"{settings.tracking_uri}")
    points = points[POINT_COLUMNS].dropna(subset=["arch", "N", "D", "C", "loss", "accuracy"])
    points = points[(points[["N", "D", "C", "loss"]] > 0).all(axis=1)]
    if points.empty:
        raise MlscaleError(f"no runs with params, samples seen, training FLOPs, test loss and "
                           f"accuracy among the {source}; train or search first")
    points["unique"] = points["unique"].where(points["unique"] > 0, np.nan)
    return points.reset_index(drop=True), source


def _fit_family(runs: pd.DataFrame, plot_dir: Path) -> dict[str, Any]:
    """The three laws of test loss, each with intervals, goodness, extrapolation and plots
    (or the reason it could not be fitted)."""
    from mlscale.scaling import fit_points

    fits: dict[str, Any] = {}
    for law in LAWS_SHOWN:
        try:
            report = fit_points(runs, law, plot_dir=plot_dir)
        except MlscaleError as error:
            fits[law] = {"error": f"not fitted: {error}"}
            continue
        fits[law] = report.to_dict() | {"plots": report.plots}
    return fits


def _select_law(runs: pd.DataFrame) -> dict[str, Any]:
    """The laws of N compared at the data size (samples seen) with the most model sizes,
    or why not, saying what was counted: a family can have many model sizes each trained
    on its own data size."""
    from mlscale.scaling import MIN_POINTS, select_law, slice_for_law

    chosen = slice_for_law(runs, "n")
    sizes_at_one = int(chosen["N"].nunique())
    if sizes_at_one < MIN_POINTS:
        data_sizes = int(runs["D"].nunique())
        return {"error": f"not compared: needs at least {MIN_POINTS} model sizes at one data "
                         f"size (samples seen); the most at any data size is {sizes_at_one} "
                         f"(the family has {runs['N'].nunique()} model sizes over "
                         f"{data_sizes} data size{'s' if data_sizes != 1 else ''})"}
    try:
        selection = select_law(chosen["N"], chosen["loss"], "test loss (nats)")
    except MlscaleError as error:
        return {"error": f"not compared: {error}"}
    return selection.to_dict() | {"at_samples_seen": float(chosen["D"].iloc[0])}


def _exponents(family: str, fits: dict[str, Any], law: dict[str, Any]) -> dict[str, Any]:
    """One row of the side-by-side table: value and 95% interval of each exponent."""
    def param(law_name: str, name: str) -> dict[str, float] | None:
        return fits[law_name].get("params", {}).get(name)

    joint = fits["nd"]
    return {"family": family, "alpha_n": param("n", "alpha"), "beta_d": param("d", "beta"),
            "alpha": param("nd", "alpha"), "beta": param("nd", "beta"),
            "a": None if not joint.get("compute_optimal") else {
                "value": joint["compute_optimal"]["a"],
                "lower": joint["compute_optimal"]["a_interval"][0],
                "upper": joint["compute_optimal"]["a_interval"][1]},
            "r2_log": joint.get("goodness", {}).get("r2_log"),
            "extrapolation_error_pct": (joint.get("extrapolation") or {}).get(
                "mean_abs_pct_error"),
            "preferred_law": law.get("preferred")}


def scaling_study(points: pd.DataFrame, plot_root: Path) -> dict[str, Any]:
    """Every number the report shows, per family and across families; the per-family fit
    plots go under ``plot_root / family``."""
    from mlscale.scaling import (
        family_saturation,
        frontier_holders,
        locate_regimes,
        parameter_efficiency,
    )

    families: dict[str, Any] = {}
    for family, runs in points.groupby("arch", sort=True):
        name = str(family)
        fits = _fit_family(runs, plot_root / name)
        families[name] = {"runs": len(runs), "params_range": [float(runs["N"].min()),
                                                              float(runs["N"].max())],
                          "fits": fits, "law_selection": _select_law(runs),
                          "saturation": family_saturation(runs)}
    study: dict[str, Any] = {
        "families": families,
        "exponents": [_exponents(name, f["fits"], f["law_selection"])
                      for name, f in families.items()],
        "frontier": frontier_holders(points)}
    try:
        study["regimes"] = locate_regimes(points)
    except MlscaleError as error:
        study["regimes"] = {"error": f"not located: {error}"}
    try:
        study["efficiency"] = parameter_efficiency(points, BASE_FAMILY)
    except MlscaleError as error:
        study["efficiency"] = {"error": f"not compared: {error}"}
    return study


def _plain(value: Any) -> Any:
    """The study as JSON-ready values (frames as records, NaN as None)."""
    import math

    import pandas as pd

    if isinstance(value, pd.DataFrame):
        return _plain(value.to_dict(orient="records"))
    if hasattr(value, "to_dict") and not isinstance(value, dict):
        return _plain(value.to_dict())
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if k != "curve"}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _plain(value.item())
    return value


def scaling_report(settings: MlflowSettings, out_dir: str | Path, *,
                   experiment: str | None = None, dataset: str | None = None,
                   families: Sequence[str] | None = None, log: bool = True
                   ) -> ScalingReportResult:
    """Write the report into ``out_dir`` and, with ``log``, record it as an MLflow run in
    the ``mlscale-reports`` experiment."""
    from mlscale.report._scaling_page import plot_study, write_pages

    out = out_folder(out_dir)
    points, source = scaling_points(settings, experiment=experiment, dataset=dataset)
    if families:
        unknown = sorted(set(families) - set(points["arch"]))
        if unknown:
            raise MlscaleError(f"no runs of {', '.join(unknown)} among the {source}; it has "
                               f"{', '.join(sorted(set(points['arch'])))}")
        points = points[points["arch"].isin(families)].reset_index(drop=True)
    with plot_style():
        study = scaling_study(points, out / "families")
        plots = plot_study(study, points, out)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    intro = (f"{len(points)} runs of {len(study['families'])} families from the {source} "
             f"(test loss in nats; FLOPs = 2 x MACs; training FLOPs = measured forward + "
             f"backward per sample x samples seen). Generated {stamp}.")
    try:
        html_path, md_path = write_pages(study, plots, out, intro)
    except OSError as error:
        raise MlscaleError(f"cannot write the report to {out}: {error.strerror}") from None
    plain = _plain(study) | {"source": source, "runs": len(points)}
    run_id = None
    if log:
        metrics = {"runs": float(len(points)), "families": float(len(study["families"]))}
        for row in plain["exponents"]:
            metrics |= {f"{row['family']}_{key}": row[key]["value"]
                        for key in ("alpha", "beta", "a")
                        if row[key] and row[key]["value"] is not None}
        run_id = log_report(settings, [html_path, md_path, *plots], kind="scaling-report",
                            metrics=metrics)
    return ScalingReportResult(html_path, md_path, plots, plain, run_id)


def print_summary(result: ScalingReportResult) -> None:
    """A few lines for people: the exponents per family and where the files went."""
    import click

    def shown(estimate: dict[str, Any] | None, key: str = "value") -> str:
        value = None if not estimate else estimate.get(key)
        return "n/a" if value is None else f"{value:.3f}"

    for row in result.study["exponents"]:
        a = row["a"]
        click.echo(f"{row['family']}: " + (
            f"alpha {shown(row['alpha'])}, beta {shown(row['beta'])}, "
            f"a {shown(a)} [{shown(a, 'lower')}, {shown(a, 'upper')}]" if a else
            result.study["families"][row["family"]]["fits"]["nd"]["error"]))
    click.echo(f"scaling report of {result.study['runs']} runs: {result.html.resolve()}")
    click.echo(f"markdown: {result.markdown.resolve()}")
    if result.mlflow_run_id:
        click.echo(f"logged to MLflow run {result.mlflow_run_id} (experiment mlscale-reports)")
