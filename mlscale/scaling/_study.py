"""The lineage study's numbers, from one table of runs across families: where each family
saturates, the three regimes of model size, the compute frontier, and how much accuracy
one family's parameters (or FLOPs) buy against another's.

The table has one row per run: ``arch``, ``N`` (parameters), ``C`` (training FLOPs),
``loss`` (test loss, nats) and ``accuracy`` (test accuracy).

Saturation (here and for ``mlscale budget``) is read off one curve: the frontier of
accuracy against x (at every x run, the best accuracy with at most that x), values of x
within ``MERGE_RATIO`` of each other taken as one, joined by PCHIP (a monotone cubic
Hermite interpolant) on log10 x. Monotone knots give a monotone curve that stays between
the first and the last knot, so it never leaves the measured accuracies, whatever the
number of sizes; LOWESS, used before, swung to 109.5% on 7 LeNet-5 sizes.

>>> n = np.array([4e3, 1.6e4, 6e4, 1.15e5, 1.15002e5, 2.4e5, 5.5e5])
>>> sat = saturation_point(n, [0.36, 0.76, 0.955, 0.93, 0.97, 0.968, 0.975])
>>> bool(sat.curve["smoothed"].between(0.36, 0.975).all()), sat.x  # still gaining at 5.5e5
(True, None)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from mlscale.errors import MlscaleError
from mlscale.scaling._fit import _positive, pareto_front

__all__ = [
    "SATURATED_GAIN",
    "SMALL_GAIN",
    "Regimes",
    "Saturation",
    "best_by",
    "curve_start",
    "family_saturation",
    "frontier_holders",
    "locate_regimes",
    "middle_regime",
    "parameter_efficiency",
    "saturation_point",
]

SATURATED_GAIN = 1e-3  # accuracy per 10x parameters: under 0.1 points is saturated
SMALL_GAIN = 1e-2  # 1 point or more per 10x parameters: the small, parameter-efficient regime
EFFICIENCY_GRID = 5  # log-spaced points across the overlap where accuracies are compared
MERGE_RATIO = 1.05  # x values within 5% of each other are one size on the curve
MIN_SIZES = 4  # sizes (after merging) a curve needs before it can say where gains stop
MIDDLE_MIN_DECADES = 0.1  # a middle regime narrower than this (26% more parameters) is none
GRID_POINTS = 200  # log-spaced points the curve and its gain are evaluated at
_APART = f"more than {100 * (MERGE_RATIO - 1):g}% apart"
REGIME_RULE = (
    "Regimes from the accuracy-parameters frontier over all families (at every parameter "
    "count run, the best accuracy of the runs with at most that many parameters, so larger "
    "runs that buy nothing count as the flat they are; counts within "
    f"{100 * (MERGE_RATIO - 1):g}% of each other taken as one size), joined by a monotone "
    "PCHIP curve on log10 N (it never leaves the measured accuracies): 'large' (saturated) "
    f"starts where the curve's gain per 10x parameters falls under {100 * SATURATED_GAIN:g} "
    "points for good (no larger size buys more), 'small' lasts until it falls under "
    f"{100 * SMALL_GAIN:g} point(s) per 10x for good, 'middle' lies between. A family's "
    "saturation point is found the same way on its own frontier.")


def best_by(runs: pd.DataFrame, cost: str, value: str, higher_is_better: bool = True
            ) -> pd.DataFrame:
    """At each distinct ``cost``, the best ``value`` of the runs with at most that cost
    (a running best: the frontier as a step function), sorted by cost."""
    per_cost = runs.groupby(cost)[value].agg("max" if higher_is_better else "min")
    running = per_cost.cummax() if higher_is_better else per_cost.cummin()
    return pd.DataFrame({cost: per_cost.index.to_numpy(dtype=float),
                         value: running.to_numpy(dtype=float)})


def _merged_frontier(log_x: np.ndarray, accuracy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knots in log10 x and the running best accuracy, one per size: values within
    ``MERGE_RATIO`` of the first of a group form one knot at their geometric mean with the
    group's best accuracy (two counts 19 parameters apart made a gain of hundreds of points
    per 10x out of run-to-run noise)."""
    order = np.argsort(log_x, kind="stable")
    log_x, accuracy = log_x[order], np.maximum.accumulate(accuracy[order])
    knots: list[float] = []
    values: list[float] = []
    start = 0
    for i in range(1, len(log_x) + 1):
        if i == len(log_x) or log_x[i] - log_x[start] > math.log10(MERGE_RATIO):
            knots.append(float(log_x[start:i].mean()))
            values.append(float(accuracy[start:i].max()))
            start = i
    return np.array(knots), np.array(values)


def _curve(x: ArrayLike, accuracy: ArrayLike, sizes: str = "distinct x") -> pd.DataFrame:
    """The frontier of ``accuracy`` against ``x`` as a monotone PCHIP curve on log10 x:
    columns x, smoothed and gain_per_decade (accuracy per 10x), on ``GRID_POINTS`` points
    from the first size to the last and at every size. An error (naming ``sizes``) with
    fewer than ``MIN_SIZES`` sizes, or on accuracies outside [0, 1] or NaN."""
    from scipy.interpolate import PchipInterpolator

    xs, acc = _positive(x, "x"), np.asarray(accuracy, dtype=float)
    if xs.shape != acc.shape or xs.ndim != 1:
        raise MlscaleError("x and accuracy must be 1-D and the same length")
    if not np.all((acc >= 0) & (acc <= 1)):
        raise MlscaleError("a saturation curve needs accuracies in [0, 1], without NaN")
    knots, values = _merged_frontier(np.log10(xs), acc)
    if knots.size < MIN_SIZES:
        raise MlscaleError(f"too few {sizes} ({knots.size} {_APART}; need {MIN_SIZES})")
    curve = PchipInterpolator(knots, values, extrapolate=False)
    # The knots themselves on the grid: where the frontier turns flat the gain is 0 at the
    # knot, so the crossing read off the grid lies before that run, not a grid step past it.
    grid = np.union1d(np.linspace(knots[0], knots[-1], GRID_POINTS), knots)
    smooth = np.clip(curve(grid), values[0], values[-1])  # float rounding only
    return pd.DataFrame({"x": 10**grid, "smoothed": smooth,
                         "gain_per_decade": curve.derivative()(grid)})


def _crossing(curve: pd.DataFrame, threshold: float) -> float | None:
    """Where the curve's gain per 10x falls under ``threshold`` for good: past it no larger
    x buys that much (log-interpolated between grid points). The first x when it never
    buys that much; None when it still does at the largest."""
    gain, log_x = curve["gain_per_decade"].to_numpy(), np.log10(curve["x"].to_numpy())
    above = np.flatnonzero(gain >= threshold)
    if above.size == 0:
        return float(10 ** log_x[0])
    i = int(above[-1])
    if i == gain.size - 1:
        return None
    t = (gain[i] - threshold) / (gain[i] - gain[i + 1])
    return float(10 ** (log_x[i] + t * (log_x[i + 1] - log_x[i])))


@dataclass(frozen=True)
class Saturation:
    """Where more x stops buying accuracy (None: not within the data), and the curve."""

    x: float | None
    curve: pd.DataFrame  # columns: x, smoothed, gain_per_decade


def saturation_point(x: ArrayLike, accuracy: ArrayLike, threshold: float = SATURATED_GAIN
                     ) -> Saturation:
    """Where the frontier of ``accuracy`` against ``x`` (the module's monotone curve)
    gains under ``threshold`` per 10x for good (1e-3 = 0.1 accuracy points).

    >>> x = np.logspace(3, 7, 30)
    >>> acc = 0.99 - 0.2 * np.exp(-x / 1e4)
    >>> round(float(np.log10(saturation_point(x, acc).x)), 2)  # exact: 4.92
    4.92
    """
    curve = _curve(x, accuracy)
    return Saturation(_crossing(curve, threshold), curve)


@dataclass(frozen=True)
class Regimes:
    """Small / middle / large model sizes, located on the all-family frontier."""

    small_until: float | None  # None: the gain never falls under SMALL_GAIN for good
    saturated_from: float | None  # None: never saturated in range
    frontier: pd.DataFrame  # N, accuracy: the best accuracy with at most N parameters
    curve: pd.DataFrame  # x, smoothed, gain_per_decade
    rule: str = REGIME_RULE

    def regime(self, n: float) -> str:
        if self.saturated_from is not None and n >= self.saturated_from:
            return "large"
        if self.small_until is not None and n >= self.small_until:
            return "middle"
        return "small"

    def to_dict(self) -> dict[str, Any]:
        return {"small_until_params": self.small_until,
                "saturated_from_params": self.saturated_from, "rule": self.rule,
                "params_range": [float(self.frontier["N"].min()),
                                 float(self.frontier["N"].max())]}


def locate_regimes(runs: pd.DataFrame) -> Regimes:
    """The three regimes by ``REGIME_RULE`` on the all-family frontier of ``runs`` (columns
    N and accuracy); an error with fewer than ``MIN_SIZES`` sizes.

    The frontier is the Pareto front's step function, not its corner points alone: the
    corners end at the best run, so models larger than it, which buy nothing, would drop
    out and the front could never read as saturated at its top."""
    frontier = best_by(runs, "N", "accuracy")
    curve = _curve(frontier["N"], frontier["accuracy"], "parameter counts on the frontier")
    return Regimes(_crossing(curve, SMALL_GAIN), _crossing(curve, SATURATED_GAIN), frontier,
                   curve)


def curve_start(regimes: Regimes) -> float:
    """Where the regimes' curve begins: a crossing there holds from the smallest run on."""
    return float(regimes.curve["x"].iloc[0])


def middle_regime(regimes: Regimes) -> str:
    """What the middle regime holds: "none" without both crossings (or with no small
    regime), "narrow" when it spans under ``MIDDLE_MIN_DECADES`` (the gain falls from 1
    to under 0.1 points per 10x on one bend of the curve, as where the frontier turns
    flat at a run), "empty" when no run lies in it, else "runs"."""
    small, large = regimes.small_until, regimes.saturated_from
    sizes = regimes.frontier["N"].to_numpy(dtype=float)
    # A crossing at the curve's start (the smallest sizes merged: their mean) means "from
    # the first size on"
    if small is None or large is None or small <= curve_start(regimes):
        return "none"
    if math.log10(large / small) < MIDDLE_MIN_DECADES:
        return "narrow"
    return "runs" if bool(np.any((sizes >= small) & (sizes < large))) else "empty"


def family_saturation(runs: pd.DataFrame) -> dict[str, Any]:
    """One family's saturation point in parameters (``REGIME_RULE`` on its own frontier,
    or the reason there is none), and where its test loss bottoms out (past it, larger
    models overfit)."""
    by_size = runs.groupby("N").agg(accuracy=("accuracy", "max"), loss=("loss", "min"))
    out: dict[str, Any] = {"params_range": [float(by_size.index.min()),
                                            float(by_size.index.max())],
                           "best_accuracy": float(by_size["accuracy"].max()),
                           "params_at_best_accuracy": float(by_size["accuracy"].idxmax())}
    lowest = float(by_size["loss"].idxmin())
    out["params_at_lowest_loss"] = lowest
    out["loss_rises_past_lowest"] = (
        float(by_size["loss"].iloc[-1] / by_size["loss"].min() - 1)
        if lowest < by_size.index.max() else 0.0)
    try:
        curve = _curve(by_size.index.to_numpy(dtype=float), by_size["accuracy"],
                       "parameter counts")
    except MlscaleError as error:
        return out | {"saturation_params": None, "reason": str(error)}
    point = _crossing(curve, SATURATED_GAIN)
    out |= {"saturation_params": point, "curve": curve,
            "reason": None if point is not None else "not saturated in its range"}
    if point is not None:
        out["saturation_accuracy"] = float(np.interp(np.log10(point), np.log10(curve["x"]),
                                                     curve["smoothed"]))
    return out


def frontier_holders(runs: pd.DataFrame) -> dict[str, Any]:
    """Best test loss and accuracy against training FLOPs over all families, and which
    family holds each in every decade of compute that has runs (the best run trained with
    at most the decade's upper edge)."""
    loss_front = pareto_front(runs, "C", "loss")
    accuracy_front = pareto_front(runs, "C", "accuracy", minimize_value=False)
    decades = []
    for k in range(math.floor(np.log10(runs["C"].min())),
                   math.floor(np.log10(runs["C"].max())) + 1):
        upper = 10.0 ** (k + 1)
        if not ((runs["C"] >= 10.0**k) & (runs["C"] < upper)).any():
            continue
        within = runs[runs["C"] < upper]
        by_loss, by_accuracy = within.loc[within["loss"].idxmin()], within.loc[
            within["accuracy"].idxmax()]
        decades.append({"from_flops": 10.0**k, "to_flops": upper,
                        "loss_family": by_loss["arch"], "loss": float(by_loss["loss"]),
                        "loss_run_flops": float(by_loss["C"]),
                        "accuracy_family": by_accuracy["arch"],
                        "accuracy": float(by_accuracy["accuracy"]),
                        "accuracy_run_flops": float(by_accuracy["C"])})
    return {"loss_front": loss_front, "accuracy_front": accuracy_front, "decades": decades}


def _compare(base: pd.DataFrame, other: pd.DataFrame, cost: str) -> dict[str, Any]:
    """Accuracy of two families at equal ``cost``, on their frontiers, interpolated in log
    cost over the overlap; and what the other needs to match the base's best accuracy."""
    base_front, other_front = best_by(base, cost, "accuracy"), best_by(other, cost, "accuracy")
    lo = max(base_front[cost].min(), other_front[cost].min())
    hi = min(base_front[cost].max(), other_front[cost].max())
    best = base_front.iloc[-1]
    reach = other_front[other_front["accuracy"] >= best["accuracy"]]
    out: dict[str, Any] = {
        "base_best_accuracy": float(best["accuracy"]),
        "base_cost_at_best": float(base_front.loc[base_front["accuracy"].idxmax(), cost]),
        "other_best_accuracy": float(other_front["accuracy"].max()),
        "other_cost_to_match": None if reach.empty else float(reach[cost].iloc[0])}
    if out["other_cost_to_match"] is not None:
        out["match_ratio"] = out["other_cost_to_match"] / out["base_cost_at_best"]
    if not lo < hi:
        out |= {"overlap": None, "note": (
            f"no overlap: base spans {base_front[cost].min():.3g}-{base_front[cost].max():.3g},"
            f" other {other_front[cost].min():.3g}-{other_front[cost].max():.3g}")}
        return out
    grid = np.logspace(np.log10(lo), np.log10(hi), EFFICIENCY_GRID)
    base_acc = np.interp(np.log10(grid), np.log10(base_front[cost]), base_front["accuracy"])
    other_acc = np.interp(np.log10(grid), np.log10(other_front[cost]), other_front["accuracy"])
    gap = 100 * (base_acc - other_acc)
    out |= {"overlap": [float(lo), float(hi)], "note": None,
            "points": [{"cost": float(c), "base": float(b), "other": float(o)}
                       for c, b, o in zip(grid, base_acc, other_acc, strict=True)],
            "mean_gap_points": float(gap.mean()), "min_gap_points": float(gap.min()),
            "max_gap_points": float(gap.max())}
    return out


def parameter_efficiency(runs: pd.DataFrame, base: str = "lenet5") -> list[dict[str, Any]]:
    """``base`` against every other family at equal parameters and at equal training FLOPs
    (gaps in accuracy points, positive when ``base`` is ahead)."""
    families = sorted(set(runs["arch"]))
    if base not in families:
        raise MlscaleError(f"no {base} runs to compare the other families with")
    base_runs = runs[runs["arch"] == base]
    return [{"family": family, "cost": cost, **_compare(base_runs, runs[runs["arch"] == family],
                                                         cost)}
            for family in families if family != base for cost in ("N", "C")]
