"""The Huber fit of a scaling law in log space: objective, start grid, L-BFGS polish, covariance.

The objective is Hoffmann et al.'s: sum_i Huber_delta(LSE(z_i(theta)) - log L_i), with
z_i = (e, c_j - p_j * log x_ij). It is evaluated over the whole start grid in one numpy
pass; only the best few starts are polished by L-BFGS-B with the analytic gradient.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize
from scipy.special import huber
from statsmodels.regression.quantile_regression import QuantReg
from statsmodels.tools.sm_exceptions import IterationLimitWarning
from threadpoolctl import threadpool_limits

from mlscale.scaling._laws import Law, effective_data, effective_data_grad, log_prediction

__all__ = ["Problem", "bootstrap_thetas", "fit_theta", "lad_covariance", "polish"]

_GRID_ELEMENTS = 4_000_000  # starts x terms x points per numpy pass (caps memory at ~150 MB)
_N_POLISH = 8  # grid starts polished by L-BFGS-B; the rest only rank them
_R_STAR_STARTS = (2.0, 5.0, 15.4, 50.0)


def _logsumexp(z: NDArray[np.float64], axis: int
               ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """log-sum-exp over ``axis`` and the softmax weights, from one max-shifted exp.

    scipy.special.logsumexp and softmax give the same numbers but spend ~0.1 ms per
    call on array-API dispatch, most of an objective evaluation here.
    """
    shift = z.max(axis=axis, keepdims=True)
    expz = np.exp(z - shift)
    total = expz.sum(axis=axis, keepdims=True)
    return np.squeeze(shift + np.log(total), axis=axis), expz / total


@dataclass(frozen=True)
class Problem:
    """One law on one data set: log x per term, log loss, and the data-constrained inputs.

    ``log_x`` holds log D' for a D term when R* is fixed; when R* is fitted (``samples``
    and ``unique`` set) the D term's log D' follows theta's last entry, log R*.
    """

    law: Law
    log_x: tuple[NDArray[np.float64], ...]
    log_y: NDArray[np.float64]
    delta: float
    samples: NDArray[np.float64] | None = None
    unique: NDArray[np.float64] | None = None

    @property
    def fits_r_star(self) -> bool:
        return self.samples is not None

    @property
    def n_params(self) -> int:
        return 1 + 2 * len(self.law.terms) + self.fits_r_star

    def take(self, index: NDArray[np.intp]) -> Problem:
        """The same problem on the points ``index`` (a bootstrap resample)."""
        return replace(
            self, log_x=tuple(lx[index] for lx in self.log_x), log_y=self.log_y[index],
            samples=None if self.samples is None else self.samples[index],
            unique=None if self.unique is None else self.unique[index])

    def _d_term(self) -> int:
        return self.law.variables.index("D")

    def _log_xs(self, theta: NDArray[np.float64]) -> list[NDArray[np.float64]]:
        """log x per term, broadcastable to (starts, points); log D' follows log R* if fitted."""
        log_xs = list(self.log_x)
        if self.samples is not None and self.unique is not None:
            log_r, inverse = np.unique(theta[:, -1], return_inverse=True)
            table = np.log([effective_data(self.samples, self.unique, float(np.exp(v)))
                            for v in log_r])
            log_xs[self._d_term()] = table[inverse]
        return log_xs

    def terms(self, theta: NDArray[np.float64]) -> NDArray[np.float64]:
        """z of shape (starts, 1 + terms, points) for theta of shape (starts, params)."""
        n_terms = len(self.law.terms)
        z = np.empty((theta.shape[0], 1 + n_terms, self.log_y.size))
        z[:, 0] = theta[:, :1]
        for j, lx in enumerate(self._log_xs(theta)):
            z[:, 1 + j] = theta[:, 1 + j, None] - theta[:, 1 + n_terms + j, None] * lx
        return z

    def values(self, thetas: NDArray[np.float64]) -> NDArray[np.float64]:
        """The Huber objective (sum, unscaled) at each row of ``thetas``."""
        pred, _ = _logsumexp(self.terms(thetas), axis=1)
        return huber(self.delta, pred - self.log_y).sum(axis=1)

    def predict_jacobian(self, theta: NDArray[np.float64]
                         ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """log L-hat at ``theta`` and its Jacobian d log L-hat / d theta (points x params)."""
        n_points = self.log_y.size
        log_xs = [np.ravel(np.broadcast_to(lx, (1, n_points)))
                  for lx in self._log_xs(theta[None, :])]
        pred, core = log_prediction(theta, log_xs)
        n_terms = len(self.law.terms)
        jac = np.empty((n_points, self.n_params))
        jac[:, : 1 + 2 * n_terms] = core.T
        if self.samples is not None and self.unique is not None:
            j = self._d_term()
            grad = effective_data_grad(self.samples, self.unique, float(np.exp(theta[-1])))
            jac[:, -1] = -core[1 + j] * theta[1 + n_terms + j] * grad
        return pred, jac

    def objective(self, theta: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        """Huber objective / delta and its gradient (scaled so L-BFGS tolerances bite)."""
        pred, jac = self.predict_jacobian(theta)
        resid = pred - self.log_y
        psi = np.clip(resid / self.delta, -1.0, 1.0)
        return float(huber(self.delta, resid).sum() / self.delta), jac.T @ psi


def start_grid(problem: Problem) -> NDArray[np.float64]:
    """Epoch AI's grid of starts (amplitudes 0..25, exponents 0..2), E placed below the data."""
    e = problem.log_y.min() + np.arange(-2.0, 0.01, 0.5)
    amps = [np.arange(0.0, 30.0, 5.0)] * len(problem.law.terms)
    exps = [np.arange(0.0, 2.01, 0.5)] * len(problem.law.terms)
    axes = [e, *amps, *exps] + ([np.log(_R_STAR_STARTS)] if problem.fits_r_star else [])
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(axes))


def polish(problem: Problem, start: NDArray[np.float64]) -> tuple[NDArray[np.float64], float]:
    """L-BFGS-B from ``start`` with the analytic gradient: (theta, Huber objective)."""
    bounds = [(None, None)] * start.size
    if problem.fits_r_star:  # R* in [1e-3, 1e4]: beyond, D' no longer depends on it
        bounds[-1] = (np.log(1e-3), np.log(1e4))
    res = minimize(problem.objective, start, jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": 2000, "ftol": 1e-13, "gtol": 1e-10})
    return res.x, float(res.fun) * problem.delta


def fit_theta(problem: Problem) -> tuple[NDArray[np.float64], float]:
    """Rank the whole start grid in chunked numpy passes, polish the best few, keep the best."""
    starts = start_grid(problem)
    chunk = max(1, _GRID_ELEMENTS // (problem.log_y.size * (1 + len(problem.law.terms))))
    values = np.concatenate([problem.values(starts[i:i + chunk])
                             for i in range(0, len(starts), chunk)])
    best = np.argsort(np.where(np.isfinite(values), values, np.inf))[:_N_POLISH]
    # scipy's L-BFGS-B makes tiny BLAS calls; OpenBLAS threads only add overhead to them
    # (50x slower on a busy 2-core machine), so the polish runs single-threaded.
    with threadpool_limits(1, user_api="blas"):
        fits = [polish(problem, starts[i]) for i in best]
    return min(fits, key=lambda fit: fit[1] if np.isfinite(fit[1]) else np.inf)


PINNED_EFFECT = 1e-6  # a parameter that moves no fitted log loss by more than this is pinned


def lad_covariance(problem: Problem, theta: NDArray[np.float64]) -> NDArray[np.float64]:
    """Covariance of theta by linearising log L-hat around the optimum.

    With delta = 1e-3 the Huber fit is a least-absolute-deviation fit wherever residuals
    exceed 1e-3 in log loss (all of them, for real runs), so its asymptotic covariance is
    LAD's, (J'J)^-1 / (4 f(0)^2) with J the Jacobian and f(0) the residual density at 0.
    statsmodels' QuantReg at q = 0.5 on the linearised model (residuals on J) estimates
    exactly that, f(0) by a kernel estimate with the Hall-Sheather bandwidth. (The Huber
    sandwich instead needs the share of residuals within +-delta, a handful of points.)

    On a handful of points LAD interpolates as many of them as it has parameters, the
    kernel estimate of f(0) degenerates and QuantReg's covariance is not finite; there the
    covariance is least squares' s^2 (J'J)^-1 on the same linearisation (s^2 on n - p
    degrees of freedom). A parameter whose term has vanished from the fit (a floor E at 0,
    an amplitude at 0) is pinned: its row and column are NaN (no interval), and the others
    are estimated without it.
    """
    pred, jac = problem.predict_jacobian(theta)
    resid = problem.log_y - pred
    free = np.abs(jac).max(axis=0) > PINNED_EFFECT
    cov = np.full((theta.size, theta.size), np.nan)
    if not free.any():
        return cov
    with warnings.catch_warnings():
        # The linear LAD coefficients are ~0 at the optimum and unused; only f(0) matters.
        warnings.simplefilter("ignore", IterationLimitWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # its degenerate f(0), handled below
        sub = np.asarray(QuantReg(resid, jac[:, free]).fit(q=0.5, max_iter=200).cov_params())
    if not np.all(np.isfinite(sub)):
        sub = _least_squares_covariance(resid, jac[:, free])
    cov[np.ix_(free, free)] = sub
    return cov


def _least_squares_covariance(resid: NDArray[np.float64], jac: NDArray[np.float64]
                              ) -> NDArray[np.float64]:
    """s^2 (J'J)^-1, NaN where no degrees of freedom are left or J'J is singular."""
    n, p = jac.shape
    normal = jac.T @ jac
    if n <= p or np.linalg.cond(normal) > 1e14:
        return np.full((p, p), np.nan)
    return float(resid @ resid) / (n - p) * np.linalg.inv(normal)


def bootstrap_thetas(problem: Problem, theta: NDArray[np.float64], n_resamples: int,
                     seed: int | None) -> NDArray[np.float64]:
    """Refit on ``n_resamples`` resamples of the points, each warm-started at ``theta``."""
    rng = np.random.default_rng(seed)
    n = problem.log_y.size
    with threadpool_limits(1, user_api="blas"):
        return np.array([polish(problem.take(rng.integers(0, n, n)), theta)[0]
                         for _ in range(n_resamples)])
