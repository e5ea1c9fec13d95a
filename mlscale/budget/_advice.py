"""The budget advisor's answers: estimates with intervals, options, advice and its warnings."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from mlscale.errors import MlscaleError

if TYPE_CHECKING:
    from mlscale.budget._model import FamilyModel
    from mlscale.budget._verdict import Verdict
    from mlscale.scaling import ScalingFit

__all__ = ["Advice", "Alternative", "Estimate", "Option", "advice_warnings", "cheapest_of_best",
           "check_positive", "check_target", "low_confidence_reasons"]


SAME_ACCURACY = 1e-3  # 0.1 accuracy points: "the same" for alternatives and saturation
EXTRAPOLATION_FACTOR = 10.0  # warn past this multiple of the largest fitted run
MIN_SAMPLES = 100  # a configuration must see at least this many samples
WEAK_FIT_SPAN = 10.0  # warn when the loss interval spans more than this factor
GRID_PER_DECADE = 24  # budgets per decade when searching for the cheapest or the least
# Predicted losses within this relative distance of the lowest are a tie (far below any
# gain an interval could show, far above the noise of a fit's flat directions, ~1e-7):
# the cheapest of them is recommended.
SAME_LOSS = 1e-5


def cheapest_of_best(loss: NDArray[np.float64], cost: NDArray[np.float64]) -> int | None:
    """The index with the least ``cost`` among those whose finite ``loss`` is the lowest
    within ``SAME_LOSS`` (relative); None when no loss is finite.

    >>> cheapest_of_best(np.array([0.5, 0.3 * (1 + 1e-8), 0.3]), np.array([1.0, 2.0, 9.0]))
    1
    """
    finite = np.isfinite(loss)
    if not finite.any():
        return None
    tied = np.flatnonzero(finite & (loss <= loss[finite].min() * (1 + SAME_LOSS)))
    return int(tied[np.argmin(cost[tied])])


@dataclass(frozen=True)
class Estimate:
    """A prediction with its 95% interval (``None`` bounds: no interval could be formed)."""

    value: float
    lower: float | None
    upper: float | None


@dataclass(frozen=True)
class Option:
    """One configuration trained on one budget, and what it is predicted to give."""

    family: str
    width: float
    depth: int
    params: int
    flops_per_sample: int
    train_flops_per_sample: int
    train_flops: float
    samples_seen: int
    epochs: float
    effective_samples: float
    predicted_test_loss: Estimate
    predicted_accuracy: Estimate
    predicted_latency_p90_ms: Estimate | None
    latency_threads: int | None  # the thread count that latency is predicted for
    # time in training steps, at the rates the family's registered runs trained at
    predicted_train_seconds: Estimate | None = None
    train_threads: int | None = None  # the CPU threads that time is predicted for (0: a GPU)

    def describe(self) -> str:
        """One line: the configuration, the data it sees and the FLOPs it spends."""
        return (f"{self.family} width {self.width:g} depth {self.depth}: {self.params:,} "
                f"params, {self.samples_seen:,} samples seen ({_count(self.epochs, 'epoch')}), "
                f"{self.train_flops:.3g} training FLOPs")

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["dials"] = {"width": payload.pop("width"), "depth": payload.pop("depth")}
        return payload


@dataclass(frozen=True)
class Alternative:
    """Another option worth knowing: ``kind`` names the question it answers
    (``cheapest_within_0.1_points``, ``fastest_within_0.1_points``,
    ``best_without_latency_limit``, ``best_FAMILY``), ``why`` says it in words."""

    kind: str
    why: str
    option: Option

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "why": self.why, "option": self.option.to_dict()}


@dataclass
class Advice:
    """The answer to one budget (or target-accuracy) question."""

    dataset: str
    budget_flops: float
    recommendation: Option
    nearest_registered_model: dict[str, Any]
    alternatives: list[Alternative]
    warnings: list[str]
    train_command: str
    fits: dict[str, dict[str, Any]]
    families: list[str]
    max_latency_ms: float | None = None
    target_accuracy: float | None = None
    registry: dict[str, Any] = field(default_factory=dict)
    verdict: Verdict | None = None  # who wins, by how much, with what confidence
    # why the recommendation is low-confidence (empty: it is not); the headline says so
    low_confidence: list[str] = field(default_factory=list)

    def headline(self) -> str:
        """The recommendation in one line, marked LOW CONFIDENCE (and why) when its fit
        is too weak to trust here."""
        mark = (f" (LOW CONFIDENCE: {'; '.join(self.low_confidence)})"
                if self.low_confidence else "")
        return f"Recommended{mark}: {self.recommendation.describe()}"

    def to_dict(self) -> dict[str, Any]:
        """The recommendation's fields at the top level, then everything around it."""
        return {"dataset": self.dataset, "budget_flops": self.budget_flops,
                "target_accuracy": self.target_accuracy, "max_latency_ms": self.max_latency_ms,
                "headline": self.headline(), "low_confidence": bool(self.low_confidence),
                "low_confidence_reasons": self.low_confidence,
                **self.recommendation.to_dict(),
                "nearest_registered_model": self.nearest_registered_model,
                "alternatives": [alt.to_dict() for alt in self.alternatives],
                "warnings": self.warnings, "train_command": self.train_command,
                "families": self.families, "fits": self.fits, "registry": self.registry,
                "verdict": self.verdict.to_dict() if self.verdict else {},
                "flops_convention": "FLOPs = 2 x MACs (torch FlopCounterMode); training "
                                    "FLOPs = measured forward + backward per sample x samples"}


def advice_warnings(fm: FamilyModel, option: Option, budget: float,
                    alternatives: list[Alternative], unique: int) -> list[str]:
    """What the user should know about ``option``: saturation, capped epochs, repeated
    data, extrapolation, pooled latency, and a weak or missing interval."""
    warnings = []
    cheapest = next((a.option for a in alternatives
                     if a.kind == "cheapest_within_0.1_points"), None)
    spent = option.train_flops
    if cheapest is not None and cheapest.train_flops <= spent / 2:
        warnings.append(
            f"saturated: more compute buys under 0.1 accuracy points here; "
            f"{cheapest.train_flops:.2g} FLOPs gets the same "
            f"({cheapest.predicted_accuracy.value:.2%} vs "
            f"{option.predicted_accuracy.value:.2%} predicted)")
    if option.train_flops < budget - option.train_flops_per_sample:
        epochs = fm.max_epochs(unique)
        warnings.append(
            f"epochs capped: the fitted {fm.family} runs typically made "
            f"{_count(epochs, 'pass', 'passes')} over their data, so the law is unmeasured "
            f"past {_count(epochs, 'epoch')} (and more passes over small data tend to raise "
            "test loss); the "
            f"recommendation stops there and leaves {budget - option.train_flops:.3g} "
            "FLOPs unspent")
    if option.epochs > 1:
        warnings.append(
            f"limited data: {option.samples_seen:,} samples seen are {option.epochs:.3g} "
            f"epochs of the {unique:,} unique training samples; repeats count "
            f"as {option.effective_samples:,.0f} effective samples "
            f"({option.effective_samples / option.samples_seen:.0%} of face value)")
    if fm.saturation_flops is not None and spent > fm.saturation_flops:
        warnings.append(
            f"the registered {fm.family} runs stop gaining 0.1 points per 10x of compute "
            f"at {fm.saturation_flops:.2g} FLOPs (the best accuracy within each compute, "
            f"{len(fm.runs)} runs)")
    ratio = spent / fm.largest_run_flops
    loss = option.predicted_test_loss
    if ratio > EXTRAPOLATION_FACTOR:
        band = "" if loss.lower is None or loss.upper is None else (
            f"; the 95% interval on test loss widens to [{loss.lower:.4g}, {loss.upper:.4g}]")
        warnings.append(
            f"extrapolation: the recommended {spent:.3g} training FLOPs are {ratio:.3g}x the "
            f"largest {fm.family} run fitted ({fm.largest_run_flops:.3g} FLOPs){band}")
    size_ratio = option.params / fm.largest_params
    if size_ratio > EXTRAPOLATION_FACTOR:
        warnings.append(
            f"extrapolation: {option.params:,} parameters are {size_ratio:.3g}x the largest "
            f"{fm.family} model fitted ({fm.largest_params:,.0f})")
    timed = fm.train_time
    if timed is not None and option.train_flops_per_sample > EXTRAPOLATION_FACTOR * timed.high:
        rate = timed.high / float(timed.predict([timed.high])[0][0])
        warnings.append(
            f"training time assumes the FLOP rate of the largest timed {fm.family} run "
            f"({rate / 1e9:.3g} GFLOP/s at {timed.high:.3g} training FLOPs per sample) for "
            f"a model of {option.train_flops_per_sample / timed.high:.3g}x its FLOPs; "
            "larger models usually run faster per FLOP, up to the machine's peak")
    if fm.latency is not None and fm.latency.pooled:
        warnings.append(f"latency of {fm.family} is predicted from all families' models "
                        f"(it has too few timed models of its own)")
    span = _weak_span(loss)
    if span == math.inf:
        warnings.append(f"no interval: the {fm.family} fit's covariance could not be "
                        "estimated")
    elif span is not None:
        warnings.append(
            f"weak fit: the 95% interval on test loss spans {span:.3g}x "
            f"({fm.loss_fit.nobs} {fm.family} runs); register runs nearer this budget")
    return warnings


def _weak_span(loss: Estimate) -> float | None:
    """How many times over the interval on test loss spans where that makes a weak fit
    (more than ``WEAK_FIT_SPAN``; inf: no interval), else None."""
    if loss.lower is None or loss.upper is None:
        return math.inf
    span = loss.upper / loss.lower
    return span if span > WEAK_FIT_SPAN else None


def low_confidence_reasons(fm: FamilyModel, option: Option) -> list[str]:
    """Why ``option`` is a low-confidence recommendation: its fit gives no interval on
    test loss, or one spanning more than ``WEAK_FIT_SPAN`` times (the weak-fit warning's
    rule); empty when neither holds."""
    accuracy, span = option.predicted_accuracy, _weak_span(option.predicted_test_loss)
    if span == math.inf:
        return [f"the {fm.family} fit gives no interval on its predicted test loss"]
    if span is None:
        return []
    band = ("" if accuracy.lower is None or accuracy.upper is None else
            f", accuracy anywhere in [{accuracy.lower:.2%}, {accuracy.upper:.2%}]")
    return [f"weak fit, the 95% interval on test loss spans {span:.3g}x{band}"]


def _count(number: float, word: str, plural: str | None = None) -> str:
    """``1 epoch``, ``1.5 epochs``, ``2 passes``."""
    return f"{number:.3g} {word if f'{number:.3g}' == '1' else plural or word + 's'}"


def check_positive(value: float, name: str) -> None:
    """A one-line error unless ``value`` is a positive finite number."""
    from mlscale.checks import check_finite_positive

    check_finite_positive(value, name)


def check_target(target_accuracy: float) -> None:
    """A one-line error unless the target accuracy is in (0, 1)."""
    if not (isinstance(target_accuracy, int | float) and 0 < target_accuracy < 1):
        raise MlscaleError(f"--target-accuracy must be in (0, 1), got {target_accuracy}")


def estimate(fit: ScalingFit, params: float, samples: int, unique: int) -> Estimate:
    """The prediction and its 95% prediction interval (the fit's parameter covariance and
    its run-to-run scatter, by the delta method on log loss)."""
    value, lower, upper = (float(v) for v in fit.predict_interval(N=params, D=samples,
                                                                    unique=unique))
    if not (math.isfinite(lower) and math.isfinite(upper)):
        return Estimate(value, None, None)
    return Estimate(value, lower, upper)


def nearest_run(fm: FamilyModel, option: Option) -> dict[str, Any]:
    """The registered run of the family closest in log parameters and log training FLOPs."""
    runs = fm.runs
    distance = (np.log10(runs["params"] / option.params) ** 2
                + np.log10(runs["train_flops"] / option.train_flops) ** 2)
    row = runs.loc[distance.idxmin()]
    keys = ["model_uri", "run_name", "params", "train_flops", "samples_seen", "test_accuracy",
            "test_loss", "latency_p90_ms"]
    return {key: plain(row[key]) for key in keys}


def plain(value: Any) -> Any:
    """numpy scalars as Python numbers, NaN as None (JSON-ready)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def fit_summary(fm: FamilyModel) -> dict[str, Any]:
    fit = fm.loss_fit
    return {"runs": int(fit.nobs), "law": fit.law.formula + " (D effective)",
            "params": {k: float(v) for k, v in fit.params.items()},
            "rmse_log_loss": float(fit.rmse), "largest_run_flops": fm.largest_run_flops,
            "saturation_flops": fm.saturation_flops,
            "latency_model": None if fm.latency is None else
            ("pooled over families" if fm.latency.pooled else f"{fm.latency.nobs} models")}
