"""What a search reports: live progress, the summary, the trials table and the plots."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from mlscale.pipeline import Pipeline
from mlscale.search._attrs import RUN_ID
from mlscale.search._costs import _spent_flops
from mlscale.search._proposals import _knob_values

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class SearchProgress:
    """What the progress callback sees after each trial (and during training)."""

    trials: dict[str, int]
    flops_spent: float
    budget_flops: float
    best_value: float | None
    message: str = ""


@dataclass(frozen=True)
class TrialMetrics:
    """What a finished trial measured (None where it stopped before measuring it)."""

    val_loss: float | None
    val_accuracy: float | None
    test_loss: float | None
    test_accuracy: float | None
    params: float | None
    train_flops: float | None
    samples_seen: float | None
    latency_p90_ms: float | None


@dataclass(frozen=True)
class TrialRow:
    """One trial in a summary: its knobs, its figures and where its model is registered."""

    trial: int
    config: dict[str, Any]  # knob -> value, as the pipeline names the knobs
    metrics: TrialMetrics
    run_name: str | None
    model_uri: str | None
    mlflow_run_id: str | None

    @classmethod
    def of(cls, trial: optuna.trial.FrozenTrial) -> TrialRow:
        attrs = trial.user_attrs
        metrics = TrialMetrics(**{f.name: attrs.get(f.name) for f in fields(TrialMetrics)})
        return cls(trial.number, _knob_values(trial.params), metrics, attrs.get("run_name"),
                   attrs.get("model_uri"), attrs.get(RUN_ID))


@dataclass
class SearchSummary:
    """The end of a search: budget ledger, trial counts, the best configurations."""

    study: str
    storage: str
    budget_flops: float
    flops_spent: float
    n_trials: dict[str, int]  # by Optuna state name
    best: TrialRow | None
    best_per_family: list[TrialRow]
    pareto_front: list[TrialRow]
    parent_run_id: str
    stop_reason: str = ""  # why the search ended: the budget spent, a grid done, ...
    plots: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _summarise(study: optuna.Study, pipeline: Pipeline, storage_url: str,
               parent_run_id: str, stop_reason: str = "") -> SearchSummary:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    counts = Counter(t.state.name for t in trials)
    best_per_family = []
    for family in pipeline.families:
        mine = [t for t in complete if t.params.get("family") == family]
        if mine:
            best_per_family.append(TrialRow.of(min(mine, key=lambda t: t.values[0])))
    best = TrialRow.of(min(complete, key=lambda t: t.values[0])) if complete else None
    pareto = ([TrialRow.of(t) for t in study.best_trials]
              if len(pipeline.objectives) > 1 and complete else [])
    return SearchSummary(study.study_name, storage_url, pipeline.budget_flops,
                         _spent_flops(trials), dict(counts), best, best_per_family, pareto,
                         parent_run_id, stop_reason)


def _log_plots(study: optuna.Study, pipeline: Pipeline, mlflow_client: Any,
               run_id: str) -> list[str]:
    """Optuna's matplotlib plots, logged to the parent run; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    import optuna.visualization.matplotlib as vis
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    multi = len(pipeline.objectives) > 1

    def first_objective(trial: optuna.trial.FrozenTrial) -> float:
        return float(trial.values[0])

    target = first_objective if multi else None
    plots: dict[str, Callable[[], Any]] = {
        "plots/optimization_history.png":
            lambda: vis.plot_optimization_history(study, target=target, target_name="val_loss"),
    }
    if len(complete) >= 2:
        plots["plots/param_importances.png"] = lambda: vis.plot_param_importances(
            study, target=target, target_name="val_loss")
    if multi and complete:
        plots["plots/pareto_front.png"] = lambda: vis.plot_pareto_front(
            study, target_names=list(pipeline.objectives))
    logged = []
    for path, draw in plots.items():
        try:
            with warnings.catch_warnings():  # "experimental" plots, importance caveats
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)
                axes = draw()
        except (ValueError, RuntimeError):  # e.g. importances need varied parameters
            continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        mlflow_client.log_figure(run_id, figure, path)
        plt.close(figure)
        logged.append(path)
    return logged
