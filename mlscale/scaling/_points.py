"""Scaling fits of real runs: points from the MLflow store or a CSV, the fit, an
extrapolation check, plots, and (for the store) an MLflow run that records it all.

>>> points = points_from_csv("runs.csv", n_col="N", loss_col="loss")  # doctest: +SKIP
>>> fit_points(points, "n").params["alpha"].value                     # doctest: +SKIP
0.31
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlscale.errors import MlscaleError
from mlscale.scaling._csv import label, points_from_csv
from mlscale.scaling._plots import plot_fit

if TYPE_CHECKING:
    import pandas as pd

    from mlscale.registry import MlflowSettings
    from mlscale.scaling._results import ScalingFit

__all__ = ["FitReport", "fit_points", "log_fit", "points_from_csv",
           "points_from_experiment", "slice_for_law"]

TARGETS = ("test_loss", "error_rate")
HOLDOUT_SHARE = 0.2  # the extrapolation check holds out the top 20% of compute
SAME_BUDGET = 1.01  # compute values closer than 1% belong to one budget


@dataclass(frozen=True)
class ParamEstimate:
    """One fitted parameter: its value, standard error and confidence interval."""

    value: float
    bse: float
    lower: float
    upper: float


@dataclass
class FitReport:
    """A fit as numbers: parameters with intervals, goodness, extrapolation, allocation."""

    law: str
    target: str
    nobs: int
    params: dict[str, ParamEstimate]
    goodness: dict[str, float]
    extrapolation: dict[str, Any] | None
    compute_optimal: dict[str, Any] | None
    summary: str
    effective_data: bool = False  # D is Muennighoff's D' (some runs repeated their data)
    warnings: list[str] = field(default_factory=list)
    derived: dict[str, str] = field(default_factory=dict)  # e.g. {"C": "C = 6 N D"}
    plots: list[str] = field(default_factory=list)
    mlflow_run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload |= payload["params"]  # each parameter also by its own name, as the CLI promises
        return payload


def points_from_experiment(settings: MlflowSettings, experiment: str, *,
                           target: str = "test_loss", arch: str | None = None
                           ) -> pd.DataFrame:
    """One point per finished training run of ``experiment``: N = params, D = samples seen,
    C = training FLOPs, ``unique`` = train size, ``k`` = training FLOPs per param per sample,
    ``accuracy`` = test accuracy (NaN where the run did not record it).
    """
    import pandas as pd

    from mlscale.names import arch_name
    from mlscale.registry import client, mlflow_errors

    if target not in TARGETS:
        raise MlscaleError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    mlflow_client = client(settings)
    with mlflow_errors(settings):
        found = mlflow_client.get_experiment_by_name(experiment)
        if found is None:
            raise MlscaleError(f"no MLflow experiment named {experiment!r} in "
                               f"{settings.tracking_uri}")
        runs = mlflow_client.search_runs([found.experiment_id],
                                         filter_string="attributes.status = 'FINISHED'",
                                         max_results=50_000)
    rows = []
    for run in runs:
        metrics, params = run.data.metrics, run.data.params
        if target not in metrics or "samples_seen" not in metrics:
            continue  # a search's parent run, a fit, ...
        if arch is not None and arch_name(params.get("arch", "")) != arch_name(arch):
            continue  # module:builder or its registry name module.builder
        rows.append({"N": metrics["params"], "D": metrics["samples_seen"],
                     "C": metrics["train_flops"], "loss": metrics[target],
                     "accuracy": metrics.get("test_accuracy", float("nan")),
                     "unique": float(params.get("resolved_train_size", "nan")),
                     "k": metrics["train_flops"] / (metrics["params"] * metrics["samples_seen"]),
                     "arch": params.get("arch"), "run_id": run.info.run_id})
    if not rows:
        which = f" for {arch}" if arch else ""
        raise MlscaleError(f"experiment {experiment!r} has no finished training runs{which}")
    points = pd.DataFrame(rows)
    points.attrs["labels"] = {"N": "the runs' parameter counts", "D": "the runs' samples seen",
                              "C": "the runs' training FLOPs", "loss": f"the runs' {target}"}
    points.attrs["runs"] = True  # rows are runs of a registry experiment, not CSV rows
    points.attrs["target"] = target
    return points


def slice_for_law(points: pd.DataFrame, law: str) -> pd.DataFrame:
    """The n-law wants runs at one data size, the d-law at one model size, the c-law the
    compute frontier; pick the slice with the most distinct values of the free variable."""
    from mlscale.scaling._fit import compute_frontier

    if law == "c":
        return compute_frontier(points)
    if law not in ("n", "d") or not {"N", "D"} <= set(points.columns):
        return points
    fixed, free = ("D", "N") if law == "n" else ("N", "D")
    groups = points.groupby(fixed)[free].nunique()
    best = groups[groups == groups.max()].index.max()
    return points[points[fixed] == best]


def _params_table(fit: ScalingFit, alpha: float) -> dict[str, ParamEstimate]:
    intervals = fit.conf_int(alpha, method="bootstrap" if fit.bootstrap_params is not None
                             else "wald")
    return {name: ParamEstimate(float(fit.params[name]), float(fit.bse[name]),
                                float(intervals.loc[name, "lower"]),
                                float(intervals.loc[name, "upper"]))
            for name in fit.param_names}


def _unique_column(points: pd.DataFrame, law: str) -> str | None:
    """"unique" when the law has D and some run saw its data more than once: those fits
    use Muennighoff's effective data D', so repeated epochs are not counted as new data."""
    from mlscale.scaling._laws import LAWS

    if "D" not in LAWS[law].variables or "unique" not in points.columns:
        return None
    unique = points["unique"].to_numpy(dtype=float)
    if not np.all(unique > 0):
        return None
    return "unique" if bool(np.any(points["D"].to_numpy(dtype=float) > unique)) else None


def _predict(fit: ScalingFit, points: pd.DataFrame, unique: str | None = None) -> np.ndarray:
    return fit.predict(**{var: points[var].to_numpy() for var in fit.law.variables},
                       unique=None if unique is None else points[unique].to_numpy())


def holdout_threshold(values: np.ndarray, share: float = HOLDOUT_SHARE) -> float | None:
    """The least value held out: the top groups of ``values`` that together hold at least
    ``share`` of the rows, so that no group (one isoFLOP budget) is cut in two; None when
    that would hold out every row. Values within SAME_BUDGET of each other form one group
    (C computed as k N D from rounded N and D differs in its last digits)."""
    distinct = np.unique(values)
    starts = distinct[np.concatenate([[True], distinct[1:] > distinct[:-1] * SAME_BUDGET])]
    wanted = max(1, round(len(values) * share))
    for threshold in starts[:0:-1]:  # group starts from the top, never the lowest group
        if np.count_nonzero(values >= threshold) >= wanted:
            return float(threshold)
    return None


def extrapolation_check(points: pd.DataFrame, law: str, *, drop_top: int = 0
                        ) -> dict[str, Any] | None:
    """Fit on the lower 80% of compute C, report the error on the top 20%; the split
    falls between budgets (``holdout_threshold``). Points without C (an n- or d-law given
    only N or D) split on that variable, and ``axis`` says which."""
    from mlscale.scaling._fit import LAWS, fit_law

    axis = "C" if "C" in points.columns else LAWS[law].variables[0]
    threshold = holdout_threshold(points[axis].to_numpy(dtype=float))
    if threshold is None:
        return None
    held_out = points[axis].to_numpy(dtype=float) >= threshold
    train, test = points[~held_out], points[held_out]
    if len(train) < len(LAWS[law].param_names) + 2:
        return None
    unique = _unique_column(points, law)
    needed = [*LAWS[law].variables, "loss", *([unique] if unique else [])]
    try:
        fit = fit_law(train[needed], law, drop_top=drop_top, unique=unique)
    except MlscaleError:
        return None
    errors = np.abs(_predict(fit, test, unique) / test["loss"].to_numpy() - 1)
    return {"fit_points": len(train), "held_out_points": len(test), "axis": axis,
            "held_out_from": float(test[axis].min()),
            "mean_abs_pct_error": float(100 * errors.mean()),
            "max_abs_pct_error": float(100 * errors.max())}


def fit_points(points: pd.DataFrame, law: str, *, target: str = "test_loss", drop_top: int = 0,
               bootstrap: int = 0, seed: int = 0, k: float | None = None,
               alpha: float = 0.05, plot_dir: str | Path | None = None) -> FitReport:
    """Fit ``law`` to ``points`` and describe the result; plots go to ``plot_dir``.

    Runs past one epoch of their ``unique`` samples are fitted on effective data D'.
    """
    from mlscale.scaling._fit import LAWS, compute_optimal, fit_law

    if law not in LAWS:
        raise MlscaleError(f"law must be one of {', '.join(LAWS)}, got {law!r}")
    needed = [*LAWS[law].variables, "loss"]
    _check_points(points, law, needed)
    chosen = slice_for_law(points, law).copy()
    chosen.attrs = dict(points.attrs)  # how to name the roles, whichever slice was taken
    _check_varies(chosen, law, needed, len(points))
    _check_enough(chosen, law, drop_top, len(points))
    unique = _unique_column(chosen, law)
    fit = fit_law(chosen[[*needed, *([unique] if unique else [])]], law, bootstrap=bootstrap,
                  seed=seed, drop_top=drop_top, unique=unique)
    optimal = None
    if law == "nd":
        k_used = k if k is not None else _k_from(points)
        allocation = compute_optimal(fit, k_used)
        intervals = allocation.conf_int(alpha)
        optimal = {"k": k_used, "a": allocation.a, "b": allocation.b,
                   "a_interval": [float(v) for v in intervals.loc["a"]],
                   "b_interval": [float(v) for v in intervals.loc["b"]]}
    report = FitReport(
        law=law, target=target, nobs=fit.nobs, params=_params_table(fit, alpha),
        goodness={"r2_log": float(fit.rsquared), "rmse_log": float(fit.rmse),
                  "huber_loss": float(fit.huber_loss)},
        extrapolation=extrapolation_check(chosen, law, drop_top=drop_top),
        compute_optimal=optimal, summary=fit.summary(alpha), effective_data=unique is not None,
        warnings=_floor_warnings(fit, chosen), derived=dict(points.attrs.get("derived", {})))
    report.warnings += _law_fails_warnings(report, fit, chosen)
    if plot_dir is not None:
        report.plots = plot_fit(fit, _effective_points(fit, chosen, unique), law,
                                Path(plot_dir), optimal)
    return report


ROLE_HINTS = {"N": "--n-col", "D": "--d-col (or --c-col with --n-col: D = C / (k N))",
              "C": "--c-col (or --n-col with --d-col: C = k N D)", "loss": "--loss-col"}


def _check_points(points: pd.DataFrame, law: str, needed: list[str]) -> None:
    """The columns the law needs are there and hold positive finite numbers."""
    missing = [role for role in needed if role not in points.columns]
    if missing:
        give = "; ".join(f"{role}: {ROLE_HINTS[role]}" for role in missing)
        raise MlscaleError(f"the {law}-law needs {', '.join(missing)}; give {give}")
    for role in needed:
        values = points[role].to_numpy(dtype=float)
        bad = np.flatnonzero(~(np.isfinite(values) & (values > 0)))
        if bad.size:
            rows = ", ".join(str(i + 1) for i in bad[:5])
            raise MlscaleError(f"{label(points, role)} must hold positive finite numbers; "
                               f"not at row(s) {rows}")


# What a role is called when the points are registry runs, and what varying it takes.
RUN_TERMS = {"N": ("parameter count", "runs of at least 2 model sizes (widths or depths)"),
             "D": ("samples seen", "runs on at least 2 amounts of data (--train-size or "
                   "epochs)"),
             "C": ("training FLOPs", "runs of at least 2 training budgets")}


def _slice_note(points: pd.DataFrame, law: str, total: int) -> str:
    """How the law chose ``points`` out of ``total``: the n-law keeps one data size, the
    d-law one model size, the c-law the compute frontier."""
    if len(points) == total:
        return ""
    runs = "runs" if points.attrs.get("runs") else "rows"
    if law == "n":
        return (f" (the n-law uses the {runs} at one data size, {points['D'].iloc[0]:,.0f}"
                f" samples; {total} in all)")
    if law == "d":
        return (f" (the d-law uses the {runs} at one model size, {points['N'].iloc[0]:,.0f}"
                f" parameters; {total} in all)")
    return f" (the {law}-law uses the {runs} on the compute frontier; {total} in all)"


def _check_varies(points: pd.DataFrame, law: str, needed: list[str], total: int) -> None:
    """A law cannot be fitted to a variable, or a loss, that never changes; the error
    says so in the user's terms (their column and option, or what their runs hold)."""
    for role in needed:
        if points[role].nunique() >= 2:
            continue
        value = float(points[role].iloc[0])
        note = _slice_note(points, law, total)
        if points.attrs.get("runs"):
            what, wanted = RUN_TERMS.get(role, (str(points.attrs.get("target", "loss")),
                                                "runs that differ in it"))
            held = (f"all {len(points)} selected runs{note} have the same {what}"
                    if len(points) > 1 else f"only one run is selected{note}, its {what}")
            if role == "loss":
                raise MlscaleError(f"{held} ({value:.4g}): nothing to fit")
            raise MlscaleError(
                f"{held} ({value:,.6g}): a law in {role} needs {wanted}; train more, or "
                "pass --arch / --experiment to select runs that have them")
        raise MlscaleError(f"{label(points, role)} holds one value ({value:,.6g}) in all "
                           f"{len(points)} rows the {law}-law uses{note}: a law in "
                           f"{role} needs at least 2 distinct values; nothing to fit")


def _check_enough(points: pd.DataFrame, law: str, drop_top: int, total: int) -> None:
    """The law has k parameters and needs k + 2 points (after --drop-top) for intervals."""
    from mlscale.scaling._laws import LAWS

    need = len(LAWS[law].param_names) + 2
    left = len(points) - drop_top
    if left >= need or drop_top >= len(points):  # (fit_law names a --drop-top too large)
        return
    after = f" after --drop-top {drop_top}" if drop_top else ""
    note = _slice_note(points, law, total)
    if points.attrs.get("runs"):
        raise MlscaleError(f"the {law}-law has {need - 2} parameters and needs at least "
                           f"{need} runs; {left} selected{note}{after}: register more runs, "
                           "or pass --arch / --experiment to select more")
    raise MlscaleError(f"the {law}-law has {need - 2} parameters and needs at least {need} "
                       f"points; got {left} rows{note}{after}")


def _floor_warnings(fit: ScalingFit, points: pd.DataFrame) -> list[str]:
    """A fitted floor (E or L_inf) above observed losses: the law misses the best runs."""
    floor = float(fit.params[fit.law.const])
    lowest = float(points["loss"].min())
    if floor <= lowest:
        return []
    below = int((points["loss"] < floor).sum())
    return [f"the fitted floor {fit.law.const} = {floor:.4g} lies above the lowest "
            f"observed loss {lowest:.4g} ({below} of {len(points)} runs below it): the law "
            f"does not describe the best runs; try --drop-top or more data"]


FLOOR_COLLAPSE = 1e-3  # a floor under this share of the lowest loss has vanished
EXTRAPOLATION_LIMIT_PCT = 20.0  # held-out error past which the law does not extrapolate


def _law_fails_warnings(report: FitReport, fit: ScalingFit, points: pd.DataFrame
                        ) -> list[str]:
    """The law does not hold: its floor vanished (the runs show none, and the fit let it
    go to ~0), or it misses the held-out top of compute by more than 20% on average."""
    warnings = []
    name = fit.law.const
    floor, lowest = float(fit.params[name]), float(points["loss"].min())
    if floor < FLOOR_COLLAPSE * lowest:
        warnings.append(
            f"the fitted floor {name} = {floor:.2g} collapsed to ~0 (under "
            f"{FLOOR_COLLAPSE:.1%} of the lowest observed loss {lowest:.4g}): the runs show "
            f"no floor, so the law does not hold past them; its {name} means nothing and its "
            "predictions beyond the runs are not to be trusted")
    check = report.extrapolation
    if check is not None and check["mean_abs_pct_error"] > EXTRAPOLATION_LIMIT_PCT:
        warnings.append(
            f"the law does not hold beyond the fitted compute: fitted below {check['axis']} = "
            f"{check['held_out_from']:.3g}, it misses the {check['held_out_points']} points "
            f"above by {check['mean_abs_pct_error']:.1f}% on average (over "
            f"{EXTRAPOLATION_LIMIT_PCT:g}%)")
    return warnings


def _effective_points(fit: ScalingFit, points: pd.DataFrame, unique: str | None
                      ) -> pd.DataFrame:
    """The points with D replaced by the effective data D' the fit used (for plots)."""
    from mlscale.scaling._laws import effective_data

    if unique is None:
        return points
    return points.assign(D=effective_data(points["D"], points[unique], fit.r_star))


def _k_from(points: pd.DataFrame) -> float:
    """Training FLOPs per parameter per sample: measured when the points carry it, else 6."""
    if "k" in points.columns:
        return float(points["k"].median())
    if {"N", "D", "C"} <= set(points.columns):
        return float((points["C"] / (points["N"] * points["D"])).median())
    return 6.0


def log_fit(report: FitReport, settings: MlflowSettings, experiment: str,
            options: dict[str, Any]) -> str:
    """Record a registry fit as an MLflow run in ``experiment``: params, metrics, plots."""
    import mlflow

    from mlscale.registry import client, experiment_id, mlflow_errors

    client(settings)
    with mlflow_errors(settings), mlflow.start_run(
            experiment_id=experiment_id(settings, experiment),
            run_name=f"fit-{report.law}-{report.target}",
            tags={"mlscale.kind": "scaling-fit"}) as run:
        mlflow.log_params({"law": report.law, "target": report.target, "nobs": report.nobs,
                           **options})
        metrics = {f"{name}_{part}": getattr(estimate, part)
                   for name, estimate in report.params.items()
                   for part in ("value", "lower", "upper")}
        metrics |= report.goodness
        if report.extrapolation:
            metrics |= {f"extrapolation_{k}": v for k, v in report.extrapolation.items()
                        if isinstance(v, float)}
        if report.compute_optimal:
            metrics |= {"compute_optimal_a": report.compute_optimal["a"],
                        "compute_optimal_b": report.compute_optimal["b"]}
        mlflow.log_metrics(metrics)
        mlflow.log_text(report.summary, "fit_summary.txt")
        mlflow.log_dict(report.to_dict(), "fit.json")
        for path in report.plots:
            mlflow.log_artifact(path, "plots")
        return str(run.info.run_id)
