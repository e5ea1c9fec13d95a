"""The lineage study's numbers, from one table of runs across families: where each family
saturates, the three regimes of model size, the compute frontier, and how much accuracy
one family's parameters (or FLOPs) buy against another's.

The table has one row per run: ``arch``, ``N`` (parameters), ``C`` (training FLOPs),
``loss`` (test loss, nats) and ``accuracy`` (test accuracy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from mlscale.errors import MlscaleError
from mlscale.scaling._fit import pareto_front, saturation_point

__all__ = [
    "SATURATED_GAIN",
    "SMALL_GAIN",
    "Regimes",
    "best_by",
    "family_saturation",
    "frontier_holders",
    "locate_regimes",
    "parameter_efficiency",
    "smoothed",
]

SATURATED_GAIN = 1e-3  # accuracy per 10x parameters: under 0.1 points is saturated
SMALL_GAIN = 1e-2  # 1 point or more per 10x parameters: the small, parameter-efficient regime
EFFICIENCY_GRID = 5  # log-spaced points across the overlap where accuracies are compared
LOWESS_POINTS = 5  # LOWESS windows hold about this many points (at most 2/3 of them all)
REGIME_RULE = (
    "Regimes from the accuracy-parameters frontier over all families (at every parameter "
    "count run, the best accuracy of the runs with at most that many parameters, so larger "
    "runs that buy nothing count as the flat they are), LOWESS-smoothed on log10 N (windows of "
    f"about {LOWESS_POINTS} points, wider where a local fit needs it): after the smoothed "
    f"gain per 10x parameters peaks, 'small' lasts while it is at least "
    f"{100 * SMALL_GAIN:g} point(s) per 10x, 'large' (saturated) starts where it falls under "
    f"{100 * SATURATED_GAIN:g} points per 10x, 'middle' lies between. A family's saturation "
    "point is found the same way on its own best accuracy at each parameter count.")


def best_by(runs: pd.DataFrame, cost: str, value: str, higher_is_better: bool = True
            ) -> pd.DataFrame:
    """At each distinct ``cost``, the best ``value`` of the runs with at most that cost
    (a running best: the frontier as a step function), sorted by cost."""
    per_cost = runs.groupby(cost)[value].agg("max" if higher_is_better else "min")
    running = per_cost.cummax() if higher_is_better else per_cost.cummin()
    return pd.DataFrame({cost: per_cost.index.to_numpy(dtype=float),
                         value: running.to_numpy(dtype=float)})


def smoothed(x: ArrayLike, accuracy: ArrayLike) -> pd.DataFrame:
    """``saturation_point``'s LOWESS curve (x, smoothed, gain_per_decade) with windows of
    about ``LOWESS_POINTS`` points, at most 2/3 of them (wide windows on many points flatten
    a sharp saturation), widened a point at a time where a local fit is undefined. With
    ``LOWESS_POINTS`` or fewer, one window holds them all: local lines through 2-3 of 4
    points swung to 118% accuracy between two close parameter counts."""
    n = len(np.asarray(x))
    frac = 1.0 if n <= LOWESS_POINTS else min(2 / 3, LOWESS_POINTS / n)
    while True:
        curve = saturation_point(x, accuracy, SATURATED_GAIN, frac=frac).curve
        if frac >= 1 or not curve["smoothed"].isna().any():
            return curve
        frac = min(1.0, frac + 1 / n)


def _first_crossing(curve: pd.DataFrame, threshold: float) -> float | None:
    """The x where the gain first falls under ``threshold`` after its peak (log-interpolated)."""
    gain, log_x = curve["gain_per_decade"].to_numpy(), np.log10(curve["x"].to_numpy())
    peak = int(np.argmax(gain))
    below = np.flatnonzero(gain[peak:] < threshold)
    if below.size == 0:
        return None
    i = peak + int(below[0])
    if i == peak:
        return float(10 ** log_x[i])
    t = (gain[i - 1] - threshold) / (gain[i - 1] - gain[i])
    return float(10 ** (log_x[i - 1] + t * (log_x[i] - log_x[i - 1])))


@dataclass(frozen=True)
class Regimes:
    """Small / middle / large model sizes, located on the all-family frontier."""

    small_until: float | None  # None: the gain never falls under SMALL_GAIN in range
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
    """The three regimes by ``REGIME_RULE`` (an error if the runs have < 4 sizes).

    The frontier is the Pareto front's step function, not its corner points alone: the
    corners end at the best run, so models larger than it, which buy nothing, would drop
    out and the front could never read as saturated at its top."""
    frontier = best_by(runs, "N", "accuracy")
    if len(frontier) < 4:
        raise MlscaleError(f"the regimes need a frontier of 4 or more parameter counts; "
                           f"got {len(frontier)}")
    curve = smoothed(frontier["N"], frontier["accuracy"])
    small = _first_crossing(curve, SMALL_GAIN)
    saturated = _first_crossing(curve, SATURATED_GAIN)
    return Regimes(small, saturated, frontier, curve)


def family_saturation(runs: pd.DataFrame) -> dict[str, Any]:
    """One family's saturation point in parameters (LOWESS on its best accuracy at each
    parameter count, windows as for the regimes), and where its test loss bottoms out
    (past it, larger models overfit)."""
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
    if len(by_size) < 4:
        out |= {"saturation_params": None,
                "reason": f"too few parameter counts ({len(by_size)}; need 4)"}
        return out
    curve = smoothed(by_size.index.to_numpy(dtype=float), by_size["accuracy"])
    point = _first_crossing(curve, SATURATED_GAIN)
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
