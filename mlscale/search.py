"""Optuna search over the zoo under a budget of training FLOPs, not a trial count.

A trial's cost is known before it trains (measured training FLOPs per sample x samples),
so a trial that would overrun the remaining budget, or the per-trial cap, is pruned
without training. Validation loss at evenly spaced points of each trial (quarters by
default; every epoch with ``evaluations: null``) goes to the pruner, so trials of
different lengths are compared at the same share of their schedule; pruned trials still
count what they spent. Every trial that trains is an MLflow run nested under the
study's parent run, and is registered. Running the same command again resumes: Optuna's
heartbeat marks the trials of a killed worker FAIL (and mlscale their MLflow runs FAILED).

>>> summary = run_search(load_pipeline("pipelines/quickstart.yaml"))  # doctest: +SKIP
>>> summary.flops_spent <= summary.budget_flops                      # doctest: +SKIP
True
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlscale.errors import MlscaleError
from mlscale.pipeline import KNOBS, Pipeline, Range

if TYPE_CHECKING:
    import optuna

    from mlscale.data import Splits
    from mlscale.tracking import MlflowSettings, TrainingOutcome
    from mlscale.train import EpochMetrics, Progress

__all__ = ["SearchProgress", "SearchSummary", "default_storage", "run_search"]

# Trial user attributes (the trial <-> run links and the budget ledger).
RUN_ID = "mlflow_run_id"
PLANNED = "planned_flops"
SPENT = "flops_spent"
PRUNE_REASON = "prune_reason"
PARENT_RUN = "mlflow_parent_run_id"
COST_PRUNE_LIMIT = 30  # consecutive unaffordable proposals that end a search


@dataclass(frozen=True)
class SearchProgress:
    """What the progress callback sees after each trial (and during training)."""

    trials: dict[str, int]
    flops_spent: float
    budget_flops: float
    best_value: float | None
    message: str = ""


@dataclass
class SearchSummary:
    """The end of a search: budget ledger, trial counts, the best configurations."""

    study: str
    storage: str
    budget_flops: float
    flops_spent: float
    n_trials: dict[str, int]
    best: dict[str, Any] | None
    best_per_family: list[dict[str, Any]]
    pareto_front: list[dict[str, Any]]
    parent_run_id: str
    plots: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_storage() -> str:
    """``registry/optuna.db`` beside ``mlflow.yaml`` (the checkout), else in the cwd."""
    checkout = Path(__file__).resolve().parents[1]
    base = checkout if (checkout / "mlflow.yaml").is_file() else Path.cwd()
    (base / "registry").mkdir(exist_ok=True)
    return f"sqlite:///{base / 'registry' / 'optuna.db'}"


def _storage(url: str, heartbeat_interval: int, on_stale: Callable[..., None]) -> Any:
    import optuna

    if "://" not in url:
        raise MlscaleError(f"storage URL '{url}' is not an SQLAlchemy URL such as "
                           "sqlite:///path.db or postgresql://user@host/db")
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's terms
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=heartbeat_interval, grace_period=2 * heartbeat_interval,
                heartbeat_stale_trial_callback=on_stale)
    except Exception as error:  # SQLAlchemy's many connection/URL errors
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MlscaleError(f"cannot open Optuna storage {url}: {first[:300]}") from None


def _suggest(trial: optuna.Trial, pipeline: Pipeline) -> dict[str, Any]:
    family = trial.suggest_categorical("family", list(pipeline.families))
    params: dict[str, Any] = {"family": family}
    for knob in KNOBS:
        spec = pipeline.knob(family, knob)
        if spec is not None:
            params[knob] = _suggest_range(trial, knob, spec)
    return params


def _suggest_range(trial: optuna.Trial, knob: str, spec: Range) -> Any:
    integer = KNOBS[knob][0]
    if spec.values is not None:
        return trial.suggest_categorical(knob, list(spec.values))
    low, high = spec.bounds
    if integer:
        return trial.suggest_int(knob, int(low), int(high), log=spec.log)
    return trial.suggest_float(knob, low, high, log=spec.log)


def _sampler(pipeline: Pipeline, seed: int) -> Any:
    import optuna

    if pipeline.sampler == "grid":
        space: dict[str, list[Any]] = {"family": list(pipeline.families)}
        space |= {k: list(r.values or ()) for k, r in pipeline.space.items()}
        return optuna.samplers.GridSampler(space, seed=seed)
    return {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
            "nsga2": optuna.samplers.NSGAIISampler}[pipeline.sampler](seed=seed)


def _pruner(pipeline: Pipeline) -> Any:
    import optuna

    if pipeline.pruner == "median":
        # Not before the second validation: the first comes right after the LR warm-up.
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if pipeline.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=pipeline.evaluations
                                              or "auto", reduction_factor=3)
    return optuna.pruners.NopPruner()


class _Costs:
    """Training FLOPs per sample by (family, width, depth), measured once each."""

    def __init__(self, pipeline: Pipeline) -> None:
        from mlscale.data import dataset_info

        self.info = dataset_info(pipeline.dataset)
        self.cache: dict[tuple[str, float, int], int] = {}

    def per_sample(self, family: str, width: float, depth: int) -> int:
        from mlscale.measure import measure_model
        from mlscale.models import get_model

        key = (family, float(width), int(depth))
        if key not in self.cache:
            channels, size, _ = self.info.input_shape
            model = get_model(family, width=width, depth=depth, in_channels=channels,
                              num_classes=self.info.num_classes, image_size=size)
            self.cache[key] = measure_model(model, self.info.input_shape,
                                            self.info.num_classes).train_flops_per_sample
        return self.cache[key]


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

    A failed trial counts what it recorded, or its whole plan when it died mid-training
    (what it spent is unknown; counting all of it keeps the budget a hard ceiling).
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
            total += attrs.get(SPENT, attrs.get(PLANNED, 0.0))
        else:
            total += attrs.get(SPENT, 0.0)
    return total


def _spent_flops(trials: list[optuna.trial.FrozenTrial]) -> float:
    from optuna.trial import TrialState

    return committed_flops([t for t in trials if t.state != TrialState.RUNNING])


def _mark_run(settings: MlflowSettings, run_id: str | None, status: str, tag: str,
              reason: str) -> None:
    from mlscale.tracking import client

    if run_id:
        mlflow_client = client(settings)
        mlflow_client.set_tag(run_id, tag, reason)
        mlflow_client.set_terminated(run_id, status)


class _Objective:
    """One trial: propose, price, maybe prune for cost, train, register, report."""

    def __init__(self, pipeline: Pipeline, settings: MlflowSettings, data: Splits,
                 parent_run_id: str, study_name: str,
                 on_training: Callable[[Progress], None] | None) -> None:
        self.pipeline, self.settings, self.data = pipeline, settings, data
        self.parent_run_id, self.study_name = parent_run_id, study_name
        self.on_training = on_training
        self.costs = _Costs(pipeline)
        self.cost_prunes_in_a_row = 0

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        import optuna

        from mlscale.tracking import train_and_register
        from mlscale.train import TrainConfig

        params = _suggest(trial, self.pipeline)
        per_sample = self.costs.per_sample(params["family"], params["width"], params["depth"])
        samples = _samples(params, per_sample)
        cost = float(samples * per_sample)
        remaining = self.pipeline.budget_flops - committed_flops(
            trial.study.get_trials(deepcopy=False), exclude=trial.number)
        trial.set_user_attr("cost_flops", cost)
        reason = None
        if samples < 1:
            reason = f"cost: {params['train_flops']:.3g} FLOPs buys no sample"
        elif self.pipeline.trial_flops_cap and cost > self.pipeline.trial_flops_cap:
            reason = f"cost: {cost:.3g} FLOPs is above the per-trial cap " \
                     f"{self.pipeline.trial_flops_cap:.3g}"
        elif cost > remaining:
            reason = f"cost: {cost:.3g} FLOPs would overrun the {remaining:.3g} left"
        if reason is not None:
            self.cost_prunes_in_a_row += 1
            trial.set_user_attr(PRUNE_REASON, reason)
            trial.set_user_attr(SPENT, 0.0)
            raise optuna.TrialPruned(reason)
        trial.set_user_attr(PLANNED, cost)
        if self._lost_reservation_race(trial, cost):
            trial.set_user_attr(PLANNED, 0.0)
            trial.set_user_attr(SPENT, 0.0)
            reason = "cost: another worker reserved the rest of the budget first"
            trial.set_user_attr(PRUNE_REASON, reason)
            raise optuna.TrialPruned(reason)
        self.cost_prunes_in_a_row = 0

        config = TrainConfig(
            arch=params["family"], width=params["width"], depth=params["depth"],
            dataset=self.pipeline.dataset, train_size=params["train_size"],
            val_size=self.pipeline.val_size, epochs=params.get("epochs"),
            max_train_flops=params.get("train_flops"), batch_size=params.get("batch_size"),
            lr=params.get("lr"), seed=self.pipeline.seed, evaluations=self.pipeline.evaluations)
        single_objective = len(self.pipeline.objectives) == 1
        run_ids: list[str] = []
        epochs_done: list[EpochMetrics] = []

        def on_run_started(run_id: str) -> None:
            run_ids.append(run_id)
            trial.set_user_attr(RUN_ID, run_id)

        def on_epoch(metrics: EpochMetrics) -> None:
            epochs_done.append(metrics)
            trial.set_user_attr(SPENT, float(metrics.samples_seen * per_sample))
            trial.set_user_attr("train_seconds", metrics.train_seconds)
            if single_objective:
                trial.report(metrics.val_loss, len(epochs_done))
                # A trial whose training is done is kept: pruning it saves nothing.
                if metrics.samples_seen < samples and trial.should_prune():
                    reason = f"pruner: val loss {metrics.val_loss:.4f} at epoch {metrics.epoch:g}"
                    trial.set_user_attr(PRUNE_REASON, reason)
                    raise optuna.TrialPruned(reason)

        try:
            outcome = train_and_register(
                config, self.settings, data=self.data, parent_run_id=self.parent_run_id,
                run_tags={"mlscale.study": self.study_name, "mlscale.trial": str(trial.number)},
                on_run_started=on_run_started,
                latency_seconds=self.pipeline.latency_seconds, on_epoch=on_epoch,
                on_progress=self.on_training)
        except optuna.TrialPruned as pruned:
            _mark_run(self.settings, run_ids[0] if run_ids else None, "KILLED",
                      "mlscale.pruned", str(pruned))
            raise
        except BaseException:
            trial.set_user_attr(SPENT, cost)  # it may have trained in full before failing
            raise
        self._record(trial, outcome)
        val_loss = outcome.result.history[-1].val_loss
        if single_objective:
            return val_loss
        return val_loss, outcome.latency.at_batch(1).p90_ms

    def _lost_reservation_race(self, trial: optuna.Trial, cost: float) -> bool:
        """After reserving, yield to running trials with lower numbers if together they
        overrun the budget: of two workers that reserved at once, exactly one backs off."""
        from optuna.trial import TrialState

        ahead = [t for t in trial.study.get_trials(deepcopy=False) if t.number != trial.number
                 and not (t.state == TrialState.RUNNING and t.number > trial.number)]
        return committed_flops(ahead) + cost > self.pipeline.budget_flops

    @staticmethod
    def _record(trial: optuna.Trial, outcome: TrainingOutcome) -> None:
        result = outcome.result
        trial.set_user_attr(SPENT, float(result.train_flops))
        figures: dict[str, Any] = {
            "val_loss": result.history[-1].val_loss, "val_accuracy": result.history[-1]
            .val_accuracy, "test_loss": result.test_loss, "test_accuracy": result.test_accuracy,
            "params": result.params, "train_flops": result.train_flops,
            "samples_seen": result.samples_seen, "run_name": result.run_name,
            "latency_p90_ms": outcome.latency.at_batch(1).p90_ms,
            "model_uri": outcome.version.model_uri if outcome.version else None,
            "train_seconds": result.train_time_s, "trainer_seconds": result.wall_time_s,
        }
        for key, value in figures.items():
            trial.set_user_attr(key, value)


def _trial_row(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    return {"trial": trial.number, "config": dict(trial.params),
            "metrics": {k: attrs.get(k) for k in ("val_loss", "val_accuracy", "test_loss",
                                                  "test_accuracy", "params", "train_flops",
                                                  "samples_seen", "latency_p90_ms")},
            "run_name": attrs.get("run_name"), "model_uri": attrs.get("model_uri"),
            "mlflow_run_id": attrs.get(RUN_ID)}


def _summarise(study: optuna.Study, pipeline: Pipeline, storage_url: str,
               parent_run_id: str) -> SearchSummary:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    counts = Counter(t.state.name for t in trials)
    best_per_family = []
    for family in pipeline.families:
        mine = [t for t in complete if t.params.get("family") == family]
        if mine:
            best_per_family.append(_trial_row(min(mine, key=lambda t: t.values[0])))
    best = _trial_row(min(complete, key=lambda t: t.values[0])) if complete else None
    pareto = ([_trial_row(t) for t in study.best_trials]
              if len(pipeline.objectives) > 1 and complete else [])
    return SearchSummary(study.study_name, storage_url, pipeline.budget_flops,
                         _spent_flops(trials), dict(counts), best, best_per_family, pareto,
                         parent_run_id)


def _log_plots(study: optuna.Study, pipeline: Pipeline) -> list[str]:
    """Optuna's matplotlib plots, logged to the active (parent) run; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
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
        mlflow.log_figure(figure, path)
        plt.close(figure)
        logged.append(path)
    return logged


def run_search(
    pipeline: Pipeline,
    settings: MlflowSettings,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    data: Splits | None = None,
    heartbeat_interval: int = 10,
    on_progress: Callable[[SearchProgress], None] | None = None,
    on_training: Callable[[Progress], None] | None = None,
) -> SearchSummary:
    """Run (or resume) the pipeline's search until its FLOPs budget is spent.

    Any number of processes may run this on the same ``storage`` and ``study_name``:
    each trial's planned cost is reserved in the storage before it trains.
    """
    import mlflow
    import optuna

    from mlscale.data import load
    from mlscale.tracking import experiment_id, mlflow_errors

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage_url = storage or default_storage()
    name = study_name or pipeline.name

    def on_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        _mark_run(settings, trial.user_attrs.get(RUN_ID), "FAILED", "mlscale.failure",
                  "the worker running this trial stopped (no heartbeat)")

    rdb = _storage(storage_url, heartbeat_interval, on_stale)
    directions = [optuna.study.StudyDirection.MINIMIZE] * len(pipeline.objectives)
    try:
        study = optuna.create_study(storage=rdb, study_name=name, directions=directions,
                                    load_if_exists=True)
    except ValueError as error:
        raise MlscaleError(f"study {name}: {error}") from None
    if list(study.directions) != directions:
        raise MlscaleError(f"study {name} exists with other objectives; pass --study NEW")
    study.sampler = _sampler(pipeline, pipeline.seed + len(study.trials))
    study.pruner = _pruner(pipeline)
    data = data if data is not None else load(pipeline.dataset)

    exp_id = experiment_id(settings, settings.experiment_name(pipeline.dataset))
    parent_run_id = study.user_attrs.get(PARENT_RUN)
    with mlflow_errors(settings):
        if parent_run_id:
            mlflow.start_run(run_id=parent_run_id)
        else:
            run = mlflow.start_run(experiment_id=exp_id, run_name=f"search-{name}",
                                   tags={"mlscale.study": name, "mlscale.storage": storage_url})
            parent_run_id = run.info.run_id
            study.set_user_attr(PARENT_RUN, parent_run_id)
            mlflow.log_params({"pipeline": pipeline.source or pipeline.name,
                               "budget_flops": pipeline.budget_flops,
                               "sampler": pipeline.sampler, "pruner": pipeline.pruner,
                               "objectives": ",".join(pipeline.objectives),
                               "families": ",".join(pipeline.families)})
    objective = _Objective(pipeline, settings, data, parent_run_id, name, on_training)
    objective.cost_prunes_in_a_row = _unaffordable_tail(study, pipeline)
    min_cost = _min_trial_cost(pipeline, objective.costs)
    status = "KILLED"
    try:
        while _should_continue(study, pipeline, objective, min_cost):
            study.optimize(objective, n_trials=1, catch=(MlscaleError,))
            if on_progress is not None:
                on_progress(_progress(study, pipeline))
        summary = _summarise(study, pipeline, storage_url, parent_run_id)
        summary.plots = _log_plots(study, pipeline)
        mlflow.log_dict(summary.to_dict(), "search_summary.json")
        mlflow.log_metrics({"flops_spent": summary.flops_spent,
                            "trials_complete": summary.n_trials.get("COMPLETE", 0)})
        status = "FINISHED"
        return summary
    finally:
        mlflow.end_run(status)


def _unaffordable_tail(study: optuna.Study, pipeline: Pipeline) -> int:
    """How many of the study's last trials were refused for a cost that is still above
    what is left: a resumed search that ended on COST_PRUNE_LIMIT stays ended, while a
    raised budget (which makes them affordable) starts the count again."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    remaining = pipeline.budget_flops - committed_flops(trials)
    tail = 0
    for trial in reversed(trials):
        refused = str(trial.user_attrs.get(PRUNE_REASON, "")).startswith("cost")
        if not refused or trial.user_attrs.get("cost_flops", 0.0) <= remaining:
            break
        tail += 1
    return tail


def _should_continue(study: optuna.Study, pipeline: Pipeline, objective: _Objective,
                     min_cost: float) -> bool:
    remaining = pipeline.budget_flops - committed_flops(study.get_trials(deepcopy=False))
    if remaining < min_cost or objective.cost_prunes_in_a_row >= COST_PRUNE_LIMIT:
        return False
    sampler = study.sampler
    return not (hasattr(sampler, "is_exhausted") and sampler.is_exhausted(study))


def _progress(study: optuna.Study, pipeline: Pipeline) -> SearchProgress:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    last = trials[-1] if trials else None
    message = ""
    if last is not None:
        attrs = last.user_attrs
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in last.params.items())
        if last.state == TrialState.COMPLETE:
            message = (f"trial {last.number} ({params}): val loss {last.values[0]:.4f}, "
                       f"test acc {attrs.get('test_accuracy', 0):.2%}, "
                       f"{attrs.get(SPENT, 0):.3g} FLOPs")
        else:
            message = (f"trial {last.number} ({params}): {last.state.name.lower()}"
                       + (f" ({attrs[PRUNE_REASON]})" if PRUNE_REASON in attrs else ""))
    best = min((t.values[0] for t in complete), default=None)
    return SearchProgress(dict(Counter(t.state.name for t in trials)), _spent_flops(trials),
                          pipeline.budget_flops, best, message)

