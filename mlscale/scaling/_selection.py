"""Which law of model size fits a family best: a power law, a logarithmic law or a
saturating exponential, compared by AIC and BIC on one Gaussian likelihood.

All three laws explain the same response ``y`` (say test loss) with the same noise model,
y = f(N) + e, e ~ N(0, sigma^2) iid, so their log-likelihoods are comparable:

- log: ``y = c + b log N``, statsmodels OLS;
- power: ``y = c + a N^-alpha``;
- exponential: ``y = c + a exp(-N / s)``.

The two nonlinear laws are linear in (c, a) once their shape parameter (alpha, s) is
fixed, so each is fitted by profile likelihood: statsmodels OLS of y on [1, N^-alpha]
(or [1, exp(-N/s)]) for each shape, the shape that maximises OLS's log-likelihood
(Gaussian, sigma^2 = RSS / n) kept. Every law's AIC and BIC come from that
log-likelihood via ``statsmodels.tools.eval_measures`` with k = its curve's parameters
+ 1 for sigma^2 (log 3, power and exponential 4).

>>> import numpy as np
>>> N = np.logspace(3, 6, 15)
>>> noise = np.random.default_rng(0).normal(0, 0.005, N.size)
>>> select_law(N, 2.0 - 0.1 * np.log(N) + noise).preferred
'log'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mlscale.errors import MlscaleError

__all__ = ["MIN_POINTS", "LawCandidate", "LawSelection", "select_law"]

MIN_POINTS = 5  # the nonlinear laws have 4 parameters with sigma^2; one degree of freedom left
SHAPE_GRID = 80  # shape values tried before the bounded refinement
MAX_ALPHA = 4.0


@dataclass(frozen=True)
class LawCandidate:
    """One law fitted by maximum likelihood, with its information criteria."""

    name: str
    formula: str
    params: dict[str, float]
    k: int  # parameters counted by AIC/BIC: the curve's plus sigma^2
    llf: float
    aic: float
    bic: float
    rmse: float


@dataclass(frozen=True)
class LawSelection:
    """The candidates, best AIC first, and the law each criterion prefers."""

    response: str
    nobs: int
    candidates: list[LawCandidate]
    preferred: str  # lowest AIC
    preferred_bic: str

    def delta_aic(self) -> dict[str, float]:
        """Each law's AIC above the best one (0 for the preferred law)."""
        best = min(c.aic for c in self.candidates)
        return {c.name: c.aic - best for c in self.candidates}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "delta_aic": self.delta_aic()}


def _ols(y: NDArray[np.float64], column: NDArray[np.float64]) -> Any:
    import statsmodels.api as sm

    return sm.OLS(y, np.column_stack([np.ones_like(column), column])).fit()


def _profile(y: NDArray[np.float64], column_for: Callable[[float], NDArray[np.float64]],
             low: float, high: float) -> tuple[float, Any]:
    """The shape in [low, high] whose OLS fit has the highest log-likelihood, and that fit."""
    from scipy.optimize import minimize_scalar

    def negative_llf(shape: float) -> float:
        column = column_for(shape)
        if np.ptp(column) <= 1e-12 * max(1.0, float(np.abs(column).max())):
            return np.inf  # a constant column: the law degenerates to y = c
        return -float(_ols(y, column).llf)

    grid = np.linspace(low, high, SHAPE_GRID)
    values = np.array([negative_llf(float(s)) for s in grid])
    if not np.isfinite(values).any():
        raise MlscaleError("the law cannot be fitted: every shape gives a constant curve")
    i = int(np.nanargmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    refined = minimize_scalar(negative_llf, bounds=(lo, hi), method="bounded")
    shape = float(refined.x) if refined.fun <= values[i] else float(grid[i])
    return shape, _ols(y, column_for(shape))


def _candidate(name: str, formula: str, params: dict[str, float], fit: Any, n_curve: int
               ) -> LawCandidate:
    from statsmodels.tools.eval_measures import aic, bic

    k = n_curve + 1
    llf, nobs = float(fit.llf), int(fit.nobs)
    return LawCandidate(name, formula, params, k, llf, float(aic(llf, nobs, k)),
                        float(bic(llf, nobs, k)), float(np.sqrt(fit.ssr / nobs)))


def select_law(n: ArrayLike, y: ArrayLike, response: str = "y") -> LawSelection:
    """Fit the three laws of ``y`` against model size ``n`` and rank them by AIC."""
    x, values = np.asarray(n, dtype=float), np.asarray(y, dtype=float)
    if x.shape != values.shape or x.ndim != 1:
        raise MlscaleError("n and y must be 1-D and the same length")
    if not np.all(x > 0) or not np.all(np.isfinite(values)):
        raise MlscaleError("n must be positive and y finite")
    if (distinct := np.unique(x).size) < MIN_POINTS:
        raise MlscaleError(f"law selection needs at least {MIN_POINTS} distinct model sizes; "
                           f"got {distinct}")
    scale = float(np.exp(np.log(x).mean()))  # N / its geometric mean keeps OLS well posed
    u = x / scale
    log_fit = _ols(values, np.log(x))
    candidates = [_candidate("log", "y = c + b log N",
                             {"c": float(log_fit.params[0]), "b": float(log_fit.params[1])},
                             log_fit, 2)]
    alpha, power_fit = _profile(values, lambda a: u**-a, 1e-3, MAX_ALPHA)
    c, a = (float(v) for v in power_fit.params)
    candidates.append(_candidate("power", "y = c + a N^-alpha",
                                 {"c": c, "a": a * scale**alpha, "alpha": alpha}, power_fit, 3))
    log_u = np.log(u)
    log_s, exp_fit = _profile(values, lambda t: np.exp(-u / np.exp(t)),
                              float(log_u.min()) - 3, float(log_u.max()) + 3)
    c, a = (float(v) for v in exp_fit.params)
    candidates.append(_candidate("exponential", "y = c + a exp(-N / s)",
                                 {"c": c, "a": a, "s": float(np.exp(log_s)) * scale},
                                 exp_fit, 3))
    candidates.sort(key=lambda cand: cand.aic)
    return LawSelection(response, int(x.size), candidates, candidates[0].name,
                        min(candidates, key=lambda cand: cand.bic).name)
