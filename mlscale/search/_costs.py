"""The budget ledger: a trial's cost before it trains, committed and spent FLOPs."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from mlscale.pipeline import Pipeline
from mlscale.search._attrs import PLANNED, SPENT

if TYPE_CHECKING:
    import optuna


class _Costs:
    """Training FLOPs per sample by (family, width, depth) on the pipeline's data (each
    measured once per process: ``measure.cost_of`` keeps them)."""

    def __init__(self, pipeline: Pipeline) -> None:
        from mlscale.data import dataset_info

        self.info = dataset_info(pipeline.dataset)

    def per_sample(self, family: str, width: float, depth: int) -> int:
        from mlscale.measure import cost_of

        return cost_of(family, float(width), int(depth), self.info.input_shape,
                       self.info.num_classes).train_flops_per_sample


def _samples(params: dict[str, Any], per_sample: int) -> int:
    if "epochs" in params:
        return int(params["epochs"]) * int(params["train_size"])
    return int(params["train_flops"] // per_sample)


def _min_trial_cost(pipeline: Pipeline, costs: _Costs) -> float:
    """The cheapest trial the search space allows: below it the budget is spent."""
    cheapest = math.inf
    for family in pipeline.families:
        width, depth = pipeline.knob(family, "width"), pipeline.knob(family, "depth")
        assert width is not None and depth is not None
        per_sample = costs.per_sample(family, width.bounds[0], int(depth.bounds[0]))
        if "epochs" in pipeline.space:
            samples = pipeline.space["epochs"].bounds[0] * pipeline.space["train_size"].bounds[0]
            cheapest = min(cheapest, per_sample * samples)
        else:
            cheapest = min(cheapest, pipeline.space["train_flops"].bounds[0])
    return cheapest


def committed_flops(trials: list[optuna.trial.FrozenTrial], exclude: int | None = None) -> float:
    """FLOPs spent by finished trials plus FLOPs reserved by running ones.

    A failed trial counts its whole plan: one that died mid-training recorded only what it
    had spent at its last evaluation, and counting all of it keeps the budget a hard ceiling.
    """
    from optuna.trial import TrialState

    total = 0.0
    for trial in trials:
        if trial.number == exclude:
            continue
        attrs = trial.user_attrs
        if trial.state == TrialState.RUNNING:
            total += attrs.get(PLANNED, 0.0)
        elif trial.state == TrialState.FAIL:
            total += max(attrs.get(SPENT, 0.0), attrs.get(PLANNED, 0.0))
        else:
            total += attrs.get(SPENT, 0.0)
    return total


def _spent_flops(trials: list[optuna.trial.FrozenTrial]) -> float:
    from optuna.trial import TrialState

    return committed_flops([t for t in trials if t.state != TrialState.RUNNING])
