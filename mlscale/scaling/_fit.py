"""Scaling-law fits and the advice drawn from them: compute-optimal allocation, effective
data under repetition, and cost-efficiency fronts.

Laws (``LAWS``), for any positive loss-like target (test loss in nats, error rate):
``"n"`` L_inf + A N^-alpha, ``"d"`` L_inf + B D^-beta, ``"nd"`` E + A N^-alpha + B D^-beta,
``"c"`` L_inf + K C^-gamma on the compute-optimal frontier (``fit_law`` takes the
frontier, ``compute_frontier``, of the rows it is given). Fits follow Hoffmann et al.
2022 / Epoch AI's replication (Huber loss, delta = 1e-3, on log loss; L-BFGS-B from a
grid of starts); the maths is in docs/SCALING_MATH.md.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> N, D = (g.ravel() for g in np.meshgrid(np.logspace(6, 9, 8), np.logspace(8, 11, 8)))
>>> loss = (1.5 + 400 / N**0.35 + 1500 / D**0.3) * np.exp(rng.normal(0, 0.01, N.size))
>>> fit = fit_law({"N": N, "D": D, "loss": loss}, "nd")
>>> fit.params.round(2).tolist()
[1.52, 435.35, 1487.58, 0.36, 0.3]
>>> round(compute_optimal(fit, k=6).a, 3)
0.457
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize_scalar
from scipy.stats import norm

from mlscale.errors import MlscaleError
from mlscale.scaling._huber import Problem, bootstrap_thetas, fit_theta, lad_covariance
from mlscale.scaling._laws import LAWS, R_STAR, effective_data
from mlscale.scaling._results import ScalingFit

__all__ = ["ComputeOptimal", "compute_frontier", "compute_optimal", "efficiency_fronts",
           "fit_law", "pareto_front"]

EFFICIENCY_COSTS = ("train_flops", "params", "latency_p90_ms")


def _positive(values: ArrayLike, name: str) -> NDArray[np.float64]:
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise MlscaleError(f"{name} is not numeric") from None
    bad = np.flatnonzero(~(np.isfinite(array) & (array > 0)))
    if bad.size:
        rows = ", ".join(str(i) for i in bad[:5])
        raise MlscaleError(f"{name} has {bad.size} NaN, infinite or non-positive value(s) "
                           f"(at position(s) {rows}); it must be finite and > 0")
    return array


def compute_frontier(frame: pd.DataFrame, c_col: str = "C", loss_col: str = "loss"
                     ) -> pd.DataFrame:
    """The compute-optimal frontier: the rows no cheaper row beats on loss, by compute.

    The c-law is fitted to it, by ``fit_law`` and by ``mlscale fit`` alike.
    """
    _positive(frame[c_col], f"column {c_col!r}")
    _positive(frame[loss_col], f"column {loss_col!r}")
    return pareto_front(frame, c_col, loss_col)


def _frame(data: pd.DataFrame | Mapping[str, ArrayLike], needed: list[str], what: str
           ) -> pd.DataFrame:
    try:
        frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(dict(data))
    except (TypeError, ValueError) as exc:
        raise MlscaleError(f"cannot read the data as a table: {exc}") from None
    missing = [col for col in needed if col not in frame.columns]
    if missing:
        raise MlscaleError(f"missing column(s) {missing} for {what}; have {list(frame.columns)}")
    return frame


def fit_law(data: pd.DataFrame | Mapping[str, ArrayLike], law: str = "nd", *,
            columns: Mapping[str, str] | None = None, unique: float | str | None = None,
            r_star: float | Literal["fit"] = R_STAR, drop_top: int = 0, delta: float = 1e-3,
            bootstrap: int = 0, seed: int | None = None) -> ScalingFit:
    """Fit ``law`` ("n", "d", "nd" or "c") to a table with columns N / D / C and ``loss``.

    ``columns`` maps those roles to other column names (``{"N": "params"}``). ``unique``
    (a number or a column) turns D into Muennighoff's effective data D' with ``r_star``
    (a number, or "fit" to fit R*). ``drop_top`` leaves out the highest-loss points;
    ``bootstrap`` > 0 refits that many resamples for ``conf_int(method="bootstrap")``.

    >>> fit_law({"N": [1e6, 1e7, 1e8, 1e9, 1e10],
    ...          "loss": [3.7, 2.9, 2.5, 2.3, 2.2]}, "n").params.round(2).tolist()
    [2.1, 102.4, 0.3]
    """
    if law not in LAWS:
        raise MlscaleError(f"unknown law {law!r}; choose from {sorted(LAWS)}")
    spec = LAWS[law]
    fits_r = r_star == "fit"
    if not fits_r and not (isinstance(r_star, int | float) and r_star > 0):
        raise MlscaleError(f"r_star must be a positive number or 'fit', got {r_star!r}")
    if unknown := set(columns or {}) - {"N", "D", "C", "loss"}:
        raise MlscaleError(f"columns= maps N, D, C and loss; unknown key(s) {sorted(unknown)}")
    if unique is not None and "D" not in spec.variables:
        raise MlscaleError(f"unique= applies to laws with D, not {law!r}")
    roles = {**{role: role for role in (*spec.variables, "loss")}, **(columns or {})}
    frame = _frame(data, [roles[role] for role in (*spec.variables, "loss")]
                   + ([unique] if isinstance(unique, str) else []), f"law {law!r}")
    if law == "c":
        frame = compute_frontier(frame, roles["C"], roles["loss"])
    if not (isinstance(drop_top, int) and 0 <= drop_top < len(frame)):
        raise MlscaleError(f"drop_top must be an int in [0, {len(frame)}), got {drop_top!r}")
    if not delta > 0 or not (isinstance(bootstrap, int) and bootstrap >= 0):
        raise MlscaleError(f"need delta > 0 and an int bootstrap >= 0; got {delta}, {bootstrap}")
    loss = _positive(frame[roles["loss"]], f"column {roles['loss']!r}")
    kept = np.sort(np.argsort(loss, kind="stable")[: len(frame) - drop_top])
    n_params = 1 + 2 * len(spec.terms) + fits_r
    if len(kept) < n_params + 2:
        raise MlscaleError(f"law {law!r} has {n_params} parameters and needs at least "
                           f"{n_params + 2} points; got {len(kept)}")
    xs = {var: _positive(frame[roles[var]], f"column {roles[var]!r}")[kept]
          for var in spec.variables}
    counts = None if unique is None else _positive(
        frame[unique] if isinstance(unique, str) else np.full(len(frame), unique), "unique")[kept]
    if fits_r and (counts is None or not np.any(xs["D"] > counts)):
        raise MlscaleError("r_star='fit' needs unique= and some points past one epoch")
    for var, values in xs.items():
        if np.unique(values).size < 2:
            raise MlscaleError(f"column {roles[var]!r} holds one value ({values[0]:g}) in every "
                               f"row: a {law!r} law needs it to vary")
    if np.unique(loss[kept]).size < 2:
        raise MlscaleError(f"column {roles['loss']!r} holds one value in every row: nothing "
                           "to fit")
    samples = xs["D"] if fits_r else None
    if counts is not None and not fits_r:
        xs["D"] = effective_data(xs["D"], counts, float(r_star))
    problem = Problem(spec, tuple(np.log(xs[v]) for v in spec.variables), np.log(loss[kept]),
                      delta, samples=samples, unique=counts if fits_r else None)
    theta, objective = fit_theta(problem)
    log_fitted, _ = problem.predict_jacobian(theta)
    return ScalingFit(
        law=spec, theta=theta, cov_theta=lad_covariance(problem, theta),
        log_loss=pd.Series(problem.log_y, index=frame.index[kept], name="log_loss"),
        log_fitted=pd.Series(log_fitted, index=frame.index[kept], name="log_fitted"),
        huber_loss=objective, delta=delta,
        r_star=float(np.exp(theta[-1]) if fits_r else r_star), r_star_fitted=fits_r,
        n_dropped=drop_top, data_constrained=unique is not None,
        bootstrap_theta=bootstrap_thetas(problem, theta, bootstrap, seed) if bootstrap else None)


@dataclass(frozen=True)
class ComputeOptimal:
    """Compute-optimal N and D under C = k N D: N_opt = G (C/k)^a, D_opt = (C/k)^b / G.

    ``a`` and ``b`` are the unconstrained law's exponents; with ``unique`` set, N_opt,
    D_opt and L_opt use effective data D' and are found numerically (docs/SCALING_MATH.md).
    """

    fit: ScalingFit
    k: float
    unique: float | None
    a: float
    b: float
    G: float

    def conf_int(self, alpha: float = 0.05,
                 method: Literal["delta", "bootstrap"] | None = None) -> pd.DataFrame:
        """Intervals for a and b: bootstrap percentiles when the fit has them, else delta."""
        boot = self.fit.bootstrap_params
        method = method or ("delta" if boot is None else "bootstrap")
        if method == "bootstrap":
            if boot is None:
                raise MlscaleError("no bootstrap draws: fit with fit_law(..., bootstrap=B)")
            draws = boot["beta"] / (boot["alpha"] + boot["beta"])
            lo, hi = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
        elif method == "delta":
            p, cov = self.fit.params, self.fit.cov_params()
            s = p["alpha"] + p["beta"]
            grad = np.array([-p["beta"], p["alpha"]]) / s**2  # d a / d (alpha, beta)
            se = float(np.sqrt(grad @ cov.loc[["alpha", "beta"], ["alpha", "beta"]] @ grad))
            lo, hi = self.a + np.array([-1, 1]) * norm.ppf(1 - alpha / 2) * se
        else:
            raise MlscaleError(f"unknown interval method {method!r}; use 'delta' or 'bootstrap'")
        return pd.DataFrame({"lower": [lo, 1 - hi], "upper": [hi, 1 - lo]}, index=["a", "b"])

    def N_opt(self, C: ArrayLike) -> NDArray[np.float64]:
        """Compute-optimal parameters for budget(s) C (FLOPs)."""
        budget = _positive(C, "C") / self.k
        n_free = self.G * budget**self.a
        if self.unique is None:
            return n_free
        return np.array([self._n_capped(c, n) for c, n in np.broadcast(budget, n_free)]
                        ).reshape(budget.shape)

    def D_opt(self, C: ArrayLike) -> NDArray[np.float64]:
        """Samples seen at the optimum (C / (k N_opt)); may exceed ``unique`` (repeats)."""
        return _positive(C, "C") / (self.k * self.N_opt(C))

    def L_opt(self, C: ArrayLike) -> NDArray[np.float64]:
        """Predicted loss at the optimum for budget(s) C."""
        return self.fit.predict(N=self.N_opt(C), D=self.D_opt(C), unique=self.unique)

    def _n_capped(self, budget: float, n_free: float) -> float:
        """argmin over N of L(N, D'(budget / N)); the free optimum stands if it needs <= U."""
        unique = self.unique
        assert unique is not None
        if budget / n_free <= unique:  # D' = D there and D' <= D everywhere
            return n_free

        def loss(log_n: NDArray[np.float64] | float) -> NDArray[np.float64]:
            n = np.exp(log_n)
            return self.fit.predict(N=n, D=budget / n, unique=unique)

        grid = np.linspace(0.0, np.log(budget), 512)  # N from 1 to budget (D >= 1)
        i = int(np.argmin(loss(grid)))
        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
        return float(np.exp(minimize_scalar(loss, bounds=(lo, hi), method="bounded").x))


def compute_optimal(fit: ScalingFit, k: float, *, unique: float | None = None
                    ) -> ComputeOptimal:
    """Compute-optimal allocation from a joint ("nd") fit with C = k N D.

    ``k`` is the family's measured training FLOPs per parameter per sample (6 for
    Chinchilla's transformers); ``unique`` caps data at that many unique samples (D').

    >>> N, D = (g.ravel() for g in np.meshgrid(np.logspace(6, 9, 6), np.logspace(8, 11, 6)))
    >>> noise = np.exp(np.random.default_rng(0).normal(0, 0.01, N.size))
    >>> fit = fit_law({"N": N, "D": D, "loss": (1.5 + 400 / N**0.35 + 1500 / D**0.3) * noise})
    >>> opt = compute_optimal(fit, k=6)
    >>> round(opt.a + opt.b, 12), f"{opt.N_opt(1e21):.2e}"
    (1.0, '3.55e+08')
    """
    if fit.law.name != "nd":
        raise MlscaleError(f"compute_optimal needs a joint 'nd' fit, not {fit.law.name!r}")
    if not k > 0 or (unique is not None and not unique > 0):
        raise MlscaleError(f"k and unique must be positive; got k={k}, unique={unique}")
    p = fit.params
    s = p["alpha"] + p["beta"]
    g = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / s)
    return ComputeOptimal(fit, float(k), None if unique is None else float(unique),
                          float(p["beta"] / s), float(p["alpha"] / s), float(g))


def pareto_front(frame: pd.DataFrame, cost_col: str, value_col: str,
                 minimize_value: bool = True) -> pd.DataFrame:
    """The rows no other row beats on both cost (lower) and value, sorted by cost.

    Per family: ``runs.groupby("family").apply(pareto_front, "flops", "error")``.

    >>> runs = pd.DataFrame({"flops": [1, 2, 3, 4], "error": [0.3, 0.35, 0.2, 0.2]})
    >>> pareto_front(runs, "flops", "error").index.tolist()
    [0, 2]
    """
    frame = _frame(frame, [cost_col, value_col], "pareto_front")
    cost = np.asarray(frame[cost_col], dtype=float)
    value = np.asarray(frame[value_col], dtype=float) * (1 if minimize_value else -1)
    if np.isnan(cost).any() or np.isnan(value).any():
        raise MlscaleError(f"pareto_front: NaN in {cost_col!r} or {value_col!r}")
    order = np.lexsort((value, cost))  # by cost, ties best value first
    best_before = np.minimum.accumulate(np.concatenate([[np.inf], value[order]]))[:-1]
    return frame.iloc[order[value[order] < best_before]]


def efficiency_fronts(frame: pd.DataFrame, *, by: str = "arch",
                      costs: tuple[str, ...] = EFFICIENCY_COSTS, value: str = "test_accuracy",
                      higher_is_better: bool = True) -> pd.DataFrame:
    """Cost-efficiency curves: per family (``by``) and per cost column, the Pareto front
    of ``value`` against that cost. Rows missing the cost or the value are left out.

    Long format, one row per front point: ``by``, ``cost``, ``cost_value``, ``value``
    and ``row`` (the point's index label in ``frame``), sorted by family, cost, cost_value.

    >>> runs = pd.DataFrame({"arch": ["a", "a", "b"], "train_flops": [1.0, 2.0, 1.0],
    ...                      "params": [9.0, 5.0, 7.0], "test_accuracy": [0.9, 0.95, 0.8]})
    >>> efficiency_fronts(runs, costs=("train_flops", "params"))["row"].tolist()
    [0, 1, 1, 2, 2]
    """
    frame = _frame(frame, [by, value, *costs], "efficiency_fronts")
    parts = []
    for family, group in frame.groupby(by, sort=True):
        for cost in costs:
            usable = group[[cost, value]].apply(pd.to_numeric, errors="coerce").dropna()
            if usable.empty:
                continue
            front = pareto_front(usable, cost, value, minimize_value=not higher_is_better)
            parts.append(pd.DataFrame({by: family, "cost": cost, "cost_value": front[cost],
                                       "value": front[value], "row": front.index}))
    columns = [by, "cost", "cost_value", "value", "row"]
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)[columns]
