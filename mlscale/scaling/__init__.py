"""Scaling laws, fitted to runs and read for advice: the public front of the package.

- the laws and their fits (``fit_law`` -> ``ScalingFit``, which predicts with intervals),
  compute-optimal allocation, effective data under repetition and cost-efficiency fronts
  (``_laws``, ``_huber``, ``_results``, ``_fit``);
- fits of real runs: points from the MLflow store or a CSV, the extrapolation check,
  plots and the MLflow run that records a fit (``_points``, ``_csv``, ``_plots``);
- the lineage study across families: saturation (one monotone curve for every saturation
  point), regimes, frontier holders, parameter efficiency, and the choice between power,
  logarithmic and exponential laws (``_study``, ``_selection``).

Callers import from here, never from the private modules. The maths is in
docs/SCALING_MATH.md.
"""

from __future__ import annotations

from mlscale.scaling._csv import points_from_csv
from mlscale.scaling._fit import (
    ComputeOptimal,
    compute_frontier,
    compute_optimal,
    efficiency_fronts,
    fit_law,
    pareto_front,
)
from mlscale.scaling._laws import LAWS, R_STAR, Law, effective_data
from mlscale.scaling._points import (
    FitReport,
    ParamEstimate,
    fit_points,
    log_fit,
    points_from_experiment,
    slice_for_law,
)
from mlscale.scaling._results import ScalingFit
from mlscale.scaling._selection import MIN_POINTS, LawCandidate, LawSelection, select_law
from mlscale.scaling._study import (
    SATURATED_GAIN,
    SMALL_GAIN,
    Regimes,
    Saturation,
    best_by,
    curve_start,
    family_saturation,
    frontier_holders,
    locate_regimes,
    middle_regime,
    parameter_efficiency,
    saturation_point,
)

__all__ = [
    "LAWS",
    "MIN_POINTS",
    "R_STAR",
    "SATURATED_GAIN",
    "SMALL_GAIN",
    "ComputeOptimal",
    "FitReport",
    "Law",
    "LawCandidate",
    "LawSelection",
    "ParamEstimate",
    "Regimes",
    "Saturation",
    "ScalingFit",
    "best_by",
    "compute_frontier",
    "compute_optimal",
    "curve_start",
    "effective_data",
    "efficiency_fronts",
    "family_saturation",
    "fit_law",
    "fit_points",
    "frontier_holders",
    "locate_regimes",
    "log_fit",
    "middle_regime",
    "parameter_efficiency",
    "pareto_front",
    "points_from_csv",
    "points_from_experiment",
    "saturation_point",
    "select_law",
    "slice_for_law",
]
