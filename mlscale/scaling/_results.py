"""ScalingFit: a fitted law with statsmodels-style params, bse, conf_int, predict, summary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy.special import ndtri, stdtrit

from mlscale.errors import MlscaleError
from mlscale.scaling._laws import LAWS, Law, effective_data, log_prediction

__all__ = ["ScalingFit"]


@dataclass(frozen=True, eq=False)
class ScalingFit:
    """A law fitted by Huber loss on log loss; build it with ``mlscale.scaling.fit_law``.

    Internally the fit lives in ``theta`` = (log constant, log amplitudes, exponents[,
    log R*]); ``params``, ``bse`` and ``cov_params()`` are in the public form
    (``E, A, B, alpha, beta``), by the delta method, and ``conf_int`` maps theta's
    intervals through exp, so intervals for E, A, B (and R*) stay positive.
    """

    law: Law
    theta: NDArray[np.float64]
    cov_theta: NDArray[np.float64]
    log_loss: pd.Series
    log_fitted: pd.Series
    huber_loss: float
    delta: float
    r_star: float
    r_star_fitted: bool
    n_dropped: int
    data_constrained: bool = False
    bootstrap_theta: NDArray[np.float64] | None = None

    @property
    def param_names(self) -> list[str]:
        return self.law.param_names + (["R_star"] if self.r_star_fitted else [])

    def _logged(self) -> NDArray[np.bool_]:
        """Which theta entries are logs of the public parameter (constant, amplitudes, R*)."""
        n_terms = len(self.law.terms)
        return np.array([i <= n_terms or i == 1 + 2 * n_terms for i in range(self.theta.size)])

    def _public(self, theta: NDArray[np.float64]) -> NDArray[np.float64]:
        with np.errstate(over="ignore"):  # an unbounded amplitude or interval end is inf
            return np.where(self._logged(), np.exp(theta), theta)

    @property
    def params(self) -> pd.Series:
        return pd.Series(self._public(self.theta), index=self.param_names, name="params")

    def cov_params(self) -> pd.DataFrame:
        """Covariance of ``params`` (delta method from theta's linearised LAD covariance)."""
        scale = np.where(self._logged(), np.exp(self.theta), 1.0)
        cov = self.cov_theta * np.outer(scale, scale)
        return pd.DataFrame(cov, index=self.param_names, columns=self.param_names)

    def cov_held(self) -> NDArray[np.float64]:
        """``cov_theta`` with pinned parameters (NaN rows: their term vanished from the fit)
        held at their estimate, for bands and draws; all NaN if nothing was estimated."""
        pinned = np.isnan(self.cov_theta).all(axis=1)
        if pinned.all():
            return self.cov_theta
        held = self.cov_theta.copy()
        held[pinned, :] = 0.0
        held[:, pinned] = 0.0
        return held

    @property
    def bse(self) -> pd.Series:
        return pd.Series(_std_errors(self.cov_params()), index=self.param_names, name="bse")

    def conf_int(self, alpha: float = 0.05, method: Literal["wald", "bootstrap"] = "wald"
                 ) -> pd.DataFrame:
        """(1 - alpha) intervals: Wald on theta mapped to params, or bootstrap percentiles."""
        if not 0 < alpha < 1:
            raise MlscaleError(f"alpha must be in (0, 1), got {alpha}")
        if method == "wald":
            half = float(ndtri(1 - alpha / 2)) * _std_errors(self.cov_theta)
            lower, upper = self._public(self.theta - half), self._public(self.theta + half)
        elif method == "bootstrap":
            if self.bootstrap_theta is None:
                raise MlscaleError("no bootstrap draws: fit with fit_law(..., bootstrap=B)")
            draws = self._public(self.bootstrap_theta)
            lower, upper = np.quantile(draws, [alpha / 2, 1 - alpha / 2], axis=0)
        else:
            raise MlscaleError(f"unknown interval method {method!r}; use 'wald' or 'bootstrap'")
        return pd.DataFrame({"lower": lower, "upper": upper}, index=self.param_names)

    def param_draws(self, size: int = 300, seed: int = 0) -> pd.DataFrame:
        """Parameter draws for bands: the bootstrap's, else theta ~ N(theta_hat, cov_theta)
        mapped to params (so amplitudes stay positive, as the fit assumes)."""
        if self.bootstrap_theta is not None:
            theta = self.bootstrap_theta
        else:
            held = self.cov_held()
            if not np.all(np.isfinite(held)):
                raise MlscaleError("the covariance could not be estimated (too few points "
                                   "for it); fit with bootstrap=B for draws")
            # The linearised covariance can be slightly indefinite on weak fits: draw from
            # its nearest positive-semidefinite matrix (negative eigenvalues set to 0).
            values, vectors = np.linalg.eigh((held + held.T) / 2)
            cov = (vectors * np.clip(values, 0, None)) @ vectors.T
            rng = np.random.default_rng(seed)
            theta = rng.multivariate_normal(self.theta, cov, size=size, method="eigh",
                                            check_valid="ignore")
        return pd.DataFrame(self._public(theta), columns=self.param_names)

    @property
    def bootstrap_params(self) -> pd.DataFrame | None:
        """One row of params per bootstrap resample (None without ``bootstrap=``)."""
        if self.bootstrap_theta is None:
            return None
        return pd.DataFrame(self._public(self.bootstrap_theta), columns=self.param_names)

    def predict(self, N: ArrayLike | None = None, D: ArrayLike | None = None,
                C: ArrayLike | None = None, *, unique: ArrayLike | None = None
                ) -> NDArray[np.float64]:
        """Predicted loss at N, D or C (whichever the law uses).

        ``unique`` (unique samples available) replaces D by the effective data D', so a
        prediction never credits repeated data as new.
        """
        given = {"N": N, "D": D, "C": C}
        xs = {}
        for _, _, var in self.law.terms:
            value = given[var]
            if value is None:
                raise MlscaleError(f"law {self.law.name!r} needs {var}= to predict")
            x = np.asarray(value, dtype=float)
            if np.any(~(x > 0)):
                raise MlscaleError(f"{var} must be positive and not NaN to predict")
            if var == "D" and unique is not None:
                x = effective_data(x, unique, self.r_star)
            xs[var] = x
        # In log space, from theta: a fit that ran off along a flat direction (an amplitude
        # past 1e308 with its exponent large) still predicts finite losses; the public
        # params' A * x**-alpha would be inf * 0.
        log_loss, _ = log_prediction(self.theta, [np.log(xs[var]) for _, _, var in self.law.terms])
        return np.exp(log_loss)

    def predict_interval(self, N: ArrayLike | None = None, D: ArrayLike | None = None,
                         C: ArrayLike | None = None, *, unique: ArrayLike | None = None,
                         alpha: float = 0.05, scatter: bool = True
                         ) -> tuple[NDArray[np.float64], NDArray[np.float64],
                                    NDArray[np.float64]]:
        """The prediction and its (1 - alpha) interval, by the delta method on log L.

        The interval carries the parameters' covariance and, with ``scatter``, the fit's
        residual variance (on nobs - parameters degrees of freedom): it then bounds a
        single new run, as a prediction interval should; the quantile is Student's t on
        those degrees of freedom. Bounds are NaN if the covariance is not finite or no
        degrees of freedom are left. (R*, when fitted, is held at its estimate.)
        """
        if not 0 < alpha < 1:
            raise MlscaleError(f"alpha must be in (0, 1), got {alpha}")
        value = self.predict(N=N, D=D, C=C, unique=unique)
        given = {"N": N, "D": D, "C": C}
        log_xs = []
        for _, _, var in self.law.terms:
            x = np.asarray(given[var], dtype=float)
            if var == "D" and unique is not None:
                x = effective_data(x, unique, self.r_star)
            log_xs.append(np.log(x))
        _, core = log_prediction(self.theta, log_xs)
        jac = np.zeros((self.theta.size, *core.shape[1:]))  # R*, if fitted, held fixed
        jac[: core.shape[0]] = core
        variance = np.einsum("i...,ij,j...->...", jac, self.cov_held(), jac)
        df = self.nobs - self.theta.size
        if df < 1:
            return value, np.full_like(value, np.nan), np.full_like(value, np.nan)
        if scatter:
            variance = variance + float((self.resid**2).sum()) / df
        half = float(stdtrit(df, 1 - alpha / 2)) * np.sqrt(np.maximum(variance, 0.0))
        with np.errstate(over="ignore"):  # an unbounded interval is inf, not a warning
            return value, value * np.exp(-half), value * np.exp(half)

    @property
    def nobs(self) -> int:
        return int(self.log_loss.size)

    @property
    def resid(self) -> pd.Series:
        """log loss - log fitted loss, per point used (the fit's residual scale)."""
        return (self.log_loss - self.log_fitted).rename("resid")

    @property
    def fittedvalues(self) -> pd.Series:
        return np.exp(self.log_fitted).rename("fitted")

    @property
    def rsquared(self) -> float:
        """R^2 of log loss."""
        centred = self.log_loss - self.log_loss.mean()
        return float(1 - (self.resid**2).sum() / (centred**2).sum())

    @property
    def rmse(self) -> float:
        """Root mean squared error of log loss."""
        return float(np.sqrt((self.resid**2).mean()))

    def summary(self, alpha: float = 0.05) -> str:
        """A text table: the law, the data, goodness of fit, and params with intervals."""
        method: Literal["wald", "bootstrap"] = (
            "wald" if self.bootstrap_theta is None else "bootstrap")
        ci = self.conf_int(alpha, method)
        level = f"{100 * (1 - alpha):g}%"
        lines = [
            f"Scaling law fit: {self.law.formula}",
            f"Loss: Huber(delta={self.delta:g}) on log loss, L-BFGS-B from a grid of starts",
            *([f"D is effective data D' (Muennighoff et al. 2023, R* = {self.r_star:.4g}"
               f"{', fitted' if self.r_star_fitted else ''})"] if self.data_constrained else []),
            f"Points: {self.nobs} (left out: {self.n_dropped} highest-loss)",
            f"Huber objective (sum): {self.huber_loss:.6g}   R^2 (log loss): "
            f"{self.rsquared:.4f}   RMSE (log loss): {self.rmse:.4g}",
            "",
            f"{'param':>8} {'value':>12} {'std err':>12} {level + ' lower':>12} "
            f"{level + ' upper':>12}",
        ]
        for name in self.param_names:
            lines.append(f"{name:>8} {self.params[name]:12.5g} {self.bse[name]:12.4g} "
                         f"{ci.loc[name, 'lower']:12.5g} {ci.loc[name, 'upper']:12.5g}")
        lines.append("")
        lines.append(
            f"Intervals: {method}"
            + (f" ({len(self.bootstrap_theta)} resamples, percentile)"
               if self.bootstrap_theta is not None else
               " (on the log of the constant and amplitudes; linearised LAD, iid residuals)"))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Everything the fit holds, as JSON-ready values (``from_dict`` rebuilds it)."""
        return {"law": self.law.name, "theta": self.theta.tolist(),
                "cov_theta": self.cov_theta.tolist(),
                "index": self.log_loss.index.tolist(), "log_loss": self.log_loss.tolist(),
                "log_fitted": self.log_fitted.tolist(), "huber_loss": self.huber_loss,
                "delta": self.delta, "r_star": self.r_star, "r_star_fitted": self.r_star_fitted,
                "n_dropped": self.n_dropped, "data_constrained": self.data_constrained,
                "bootstrap_theta": None if self.bootstrap_theta is None
                else self.bootstrap_theta.tolist()}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> ScalingFit:
        """The fit ``to_dict`` described."""
        index = payload["index"]
        boot = payload["bootstrap_theta"]
        return cls(
            law=LAWS[payload["law"]], theta=np.asarray(payload["theta"], dtype=float),
            cov_theta=np.asarray(payload["cov_theta"], dtype=float),
            log_loss=pd.Series(payload["log_loss"], index=index, name="log_loss", dtype=float),
            log_fitted=pd.Series(payload["log_fitted"], index=index, name="log_fitted",
                                 dtype=float),
            huber_loss=float(payload["huber_loss"]), delta=float(payload["delta"]),
            r_star=float(payload["r_star"]), r_star_fitted=bool(payload["r_star_fitted"]),
            n_dropped=int(payload["n_dropped"]),
            data_constrained=bool(payload["data_constrained"]),
            bootstrap_theta=None if boot is None else np.asarray(boot, dtype=float))

    def __repr__(self) -> str:
        values = ", ".join(f"{k}={v:.4g}" for k, v in self.params.items())
        return f"ScalingFit(law={self.law.name!r}, nobs={self.nobs}, {values})"


def _std_errors(cov: NDArray[np.float64]) -> NDArray[np.float64]:
    """Square roots of the covariance's diagonal; NaN where a degenerate fit's variance
    came out negative (shown as nan in the table, not as a numpy warning)."""
    variances = np.diag(cov)
    return np.sqrt(np.where(variances >= 0, variances, np.nan))
