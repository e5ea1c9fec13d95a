"""The four scaling laws as sums of power terms, and Muennighoff et al.'s effective data.

Every law is ``L = exp(e) + sum_j exp(c_j) * x_j ** -p_j``; fits work on the internal
vector ``theta = (e, c_1..c_T, p_1..p_T[, log R*])`` so that ``log L`` is a log-sum-exp
of terms linear in theta (see docs/SCALING_MATH.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mlscale.errors import MlscaleError

__all__ = ["LAWS", "R_STAR", "Law", "effective_data", "effective_data_grad", "log_prediction"]

R_STAR = 15.4  # Muennighoff et al. 2023's fitted R_D*: repetitions at which data has half-decayed


@dataclass(frozen=True)
class Law:
    """A law's public names: the constant, then one (amplitude, exponent, variable) per term."""

    name: str
    formula: str
    const: str
    terms: tuple[tuple[str, str, str], ...]

    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(var for _, _, var in self.terms)

    @property
    def param_names(self) -> list[str]:
        """Public order: constant, amplitudes, exponents (``E, A, B, alpha, beta``)."""
        return [self.const, *(amp for amp, _, _ in self.terms), *(exp for _, exp, _ in self.terms)]

    def evaluate(self, params: Mapping[str, float], xs: Mapping[str, ArrayLike]
                 ) -> NDArray[np.float64]:
        """L = constant + sum of amplitude * x ** -exponent, at public parameters."""
        loss: NDArray[np.float64] = np.asarray(params[self.const], dtype=float)
        for amp, exp, var in self.terms:
            loss = loss + params[amp] * np.asarray(xs[var], dtype=float) ** -params[exp]
        return loss


LAWS: dict[str, Law] = {
    "n": Law("n", "L(N) = L_inf + A * N^-alpha", "L_inf", (("A", "alpha", "N"),)),
    "d": Law("d", "L(D) = L_inf + B * D^-beta", "L_inf", (("B", "beta", "D"),)),
    "nd": Law("nd", "L(N, D) = E + A * N^-alpha + B * D^-beta", "E",
              (("A", "alpha", "N"), ("B", "beta", "D"))),
    "c": Law("c", "L(C) = L_inf + K * C^-gamma (compute-optimal frontier)", "L_inf",
             (("K", "gamma", "C"),)),
}


def log_prediction(theta: NDArray[np.float64], log_xs: Sequence[ArrayLike]
                   ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """log L at one internal ``theta`` and its Jacobian over (e, c_j, p_j), given log x
    per term: the one evaluator the Huber fit, the intervals and the bands share.

    The Jacobian has shape (1 + 2T, *shape of the broadcast log x); a fitted R*'s column
    (log D' depends on it) is the caller's.
    """
    n_terms = len(log_xs)
    logs = np.broadcast_arrays(*(np.asarray(lx, dtype=float) for lx in log_xs))
    z = np.stack([np.full(logs[0].shape, theta[0])]
                 + [theta[1 + j] - theta[1 + n_terms + j] * lx for j, lx in enumerate(logs)])
    shift = z.max(axis=0)
    weights = np.exp(z - shift)
    total = weights.sum(axis=0)
    weights /= total
    jac = np.empty((1 + 2 * n_terms, *logs[0].shape))
    jac[: 1 + n_terms] = weights
    for j, lx in enumerate(logs):
        jac[1 + n_terms + j] = -weights[1 + j] * lx
    return shift + np.log(total), jac


def effective_data(samples_seen: ArrayLike, unique: ArrayLike, r_star: float = R_STAR
                   ) -> NDArray[np.float64]:
    """Muennighoff et al. 2023's effective data D' for ``samples_seen`` drawn from ``unique``.

    Up to one epoch D' = samples; past it, with R_D = samples / unique - 1 repetitions,
    D' = U + U * R* * (1 - exp(-R_D / R*)), which saturates at U * (1 + R*).

    >>> effective_data([30_000, 60_000, 600_000], 60_000).round()
    array([ 30000.,  60000., 468933.])
    """
    samples, u = np.asarray(samples_seen, dtype=float), np.asarray(unique, dtype=float)
    if not r_star > 0:
        raise MlscaleError(f"r_star must be positive, got {r_star}")
    if np.any(~(samples > 0)) or np.any(~(u > 0)):
        raise MlscaleError("effective_data needs positive samples_seen and unique counts")
    repeats = np.maximum(samples / u - 1.0, 0.0)
    return np.where(repeats > 0, u + u * r_star * -np.expm1(-repeats / r_star), samples)


def effective_data_grad(samples_seen: NDArray[np.float64], unique: NDArray[np.float64],
                        r_star: float) -> NDArray[np.float64]:
    """d log D' / d log R*, the derivative a fit of R* needs (0 within the first epoch)."""
    repeats = np.maximum(samples_seen / unique - 1.0, 0.0)
    decay = np.exp(-repeats / r_star)
    d_dr = unique * ((1.0 - decay) - repeats / r_star * decay)
    return d_dr * r_star / effective_data(samples_seen, unique, r_star)
