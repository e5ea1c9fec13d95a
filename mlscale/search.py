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

import contextlib
import math
import os
import socket
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlscale._concurrency import (
    admission_refusal,
    masked_url,
    open_study,
    per_trial_seeds,
    shared_parent_run,
    store_error,
)
from mlscale._search_failures import FAIL_REASON, repeated_failure
from mlscale._signals import deferred_signals
from mlscale.errors import MlscaleError, first_line
from mlscale.pipeline import KNOBS, Pipeline, Range

if TYPE_CHECKING:
    import optuna

    from mlscale.data import Splits
    from mlscale.registry import MlflowSettings
    from mlscale.train import EpochMetrics, Progress
    from mlscale.workflow import TrainingOutcome

__all__ = ["SearchProgress", "SearchSummary", "default_storage", "run_search"]

# Trial user attributes (the trial <-> run links and the budget ledger).
RUN_ID = "mlflow_run_id"
PLANNED = "planned_flops"
SPENT = "flops_spent"
PRUNE_REASON = "prune_reason"
WORKER = "worker"  # host:pid of the process that ran the trial
PARENT_RUN = "mlflow_parent_run_id"
COST_PRUNE_LIMIT = 30  # consecutive unaffordable proposals that end a search
FAILURE_LIMIT = 5  # consecutive failed trials (a store down, a broken model) that stop a worker
STORE_WAIT_S = 120.0  # how long a worker waits for an MLflow store that stopped answering
# A trial's heartbeat may lag well behind its interval on a loaded machine (three workers,
# PostgreSQL and an MLflow server on two cores lagged past 2 s): never fail one sooner.
STALE_AFTER_MIN_S = 10


def stale_after_s(heartbeat_interval: int) -> int:
    """Seconds without a heartbeat after which another worker fails a running trial."""
    return max(2 * heartbeat_interval, STALE_AFTER_MIN_S)


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
    from filelock import FileLock
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    if "://" not in url:
        raise MlscaleError(f"storage URL '{url}' is not an SQLAlchemy URL such as "
                           "sqlite:///path.db or postgresql://user@host/db")
    _check_driver(url)
    # Two workers creating a fresh SQLite schema at once collide: one at a time per file.
    # On a server database the loser of that race sees the winner's tables on a retry.
    lock = (FileLock(url.removeprefix("sqlite:///") + ".lock", timeout=300)
            if url.startswith("sqlite:///") else contextlib.nullcontext())
    for attempt in range(3):
        try:
            with lock, warnings.catch_warnings():  # heartbeats are "experimental" to Optuna
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=heartbeat_interval,
                    grace_period=stale_after_s(heartbeat_interval),
                    heartbeat_stale_trial_callback=on_stale)
        except (IntegrityError, ProgrammingError) as error:
            if attempt == 2:
                raise store_error(url, error) from None
            time.sleep(0.5)
        except Exception as error:  # SQLAlchemy's many connection/URL errors
            raise store_error(url, error) from None
    raise AssertionError("unreachable")


def _check_driver(url: str) -> None:
    """``postgresql://`` means psycopg (version 3) to SQLAlchemy 2.1, and mlscale's
    ``postgres`` extra installs exactly that driver, so the plain URL needs no rewriting
    (and ``mlflow server`` reads the same URL the same way)."""
    import importlib.util

    if url.startswith(("postgresql://", "postgresql+psycopg://")) and \
            importlib.util.find_spec("psycopg") is None:
        raise MlscaleError(f"storage {url.split('://')[0]}:// needs the psycopg driver: "
                           "pip install -e '.[postgres]'")


def _suggest(trial: optuna.Trial, pipeline: Pipeline) -> dict[str, Any]:
    family = trial.suggest_categorical("family", list(pipeline.families))
    params: dict[str, Any] = {"family": family}
    for knob in KNOBS:
        spec = pipeline.knob(family, knob)
        if spec is not None:
            params[knob] = _suggest_range(trial, _param_name(pipeline, family, knob), knob, spec)
    return params


def _param_name(pipeline: Pipeline, family: str, knob: str) -> str:
    """Optuna's name for ``knob`` in a ``family`` trial: the knob itself where the family
    searches the shared range, else ``knob.family``. Optuna keeps one distribution kind per
    name (and a categorical's choices fixed), so a family's own range needs its own name;
    TPE then also models each family's override apart."""
    own = pipeline.family_space.get(family, {}).get(knob)
    return knob if own is None or own == pipeline.space.get(knob) else f"{knob}.{family}"


def _knob_values(trial_params: dict[str, Any]) -> dict[str, Any]:
    """A trial's Optuna parameters by knob (``lr.lenet5`` is the ``lr`` knob)."""
    return {name.partition(".")[0]: value for name, value in trial_params.items()}


def _suggest_range(trial: optuna.Trial, name: str, knob: str, spec: Range) -> Any:
    integer = KNOBS[knob][0]
    if spec.values is not None:
        return trial.suggest_categorical(name, list(spec.values))
    low, high = spec.bounds
    if integer:
        return trial.suggest_int(name, int(low), int(high), log=spec.log)
    return trial.suggest_float(name, low, high, log=spec.log)


def _sampler(pipeline: Pipeline) -> Any:
    """The pipeline's sampler, each trial's proposal a function of the seed and its number."""
    import optuna

    if pipeline.sampler == "grid":
        # Optuna's grid already gives trial n the n-th point of one seeded permutation.
        space: dict[str, list[Any]] = {"family": list(pipeline.families)}
        space |= {k: list(r.values or ()) for k, r in pipeline.space.items()}
        return optuna.samplers.GridSampler(space, seed=pipeline.seed)

    def make(seed: int) -> optuna.samplers.BaseSampler:
        if pipeline.sampler == "tpe":
            # The constant liar counts other workers' running trials as bad results, so
            # parallel workers explore apart; one worker has none, and is unchanged.
            return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        return {"random": optuna.samplers.RandomSampler,
                "nsga2": optuna.samplers.NSGAIISampler}[pipeline.sampler](seed=seed)

    return per_trial_seeds(make, pipeline.seed)


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


def _mark_run(settings: MlflowSettings, run_id: str | None, status: str, tag: str,
              reason: str) -> None:
    from mlscale.registry import client

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
        self.failures_in_a_row = 0
        self.current_trial: optuna.Trial | None = None

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        self.current_trial = trial
        try:
            return self._run(trial)
        except KeyboardInterrupt as stop:  # while proposing, pricing or admitting
            if FAIL_REASON not in trial.user_attrs:
                self._record_failure(trial, stop, trained=False, cost=0.0)
            raise

    def _run(self, trial: optuna.Trial) -> float | tuple[float, float]:
        import optuna

        from mlscale.train import TrainConfig
        from mlscale.workflow import train_and_register

        trial.set_user_attr(WORKER, f"{socket.gethostname()}:{os.getpid()}")
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
        reason = admission_refusal(trial, cost, self.pipeline.budget_flops, committed_flops)
        if reason is not None:
            trial.set_user_attr(PLANNED, 0.0)
            trial.set_user_attr(SPENT, 0.0)
            trial.set_user_attr(PRUNE_REASON, reason)
            if reason.startswith("duplicate"):  # a sampler that only repeats itself is done
                self.cost_prunes_in_a_row += 1
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
        except BaseException as error:
            self._record_failure(trial, error, trained=bool(run_ids), cost=cost)
            if isinstance(error, Exception) and not isinstance(error, MlscaleError):
                raise MlscaleError(str(trial.user_attrs.get(FAIL_REASON))) from error
            raise
        self._record(trial, outcome)
        val_loss = outcome.result.history[-1].val_loss
        if single_objective:
            return val_loss
        return val_loss, outcome.latency.at_batch(1).p90_ms

    @staticmethod
    def _record_failure(trial: optuna.Trial, error: BaseException, trained: bool,
                        cost: float) -> None:
        """Why the trial failed, and what it costs: nothing if its run never started,
        else its whole plan (it may have trained in full before failing)."""
        reason = first_line(error, 500)
        if isinstance(error, KeyboardInterrupt):
            reason = f"interrupted ({getattr(error, 'signal_name', 'SIGINT')})"
        trial.set_user_attr(FAIL_REASON, reason)
        trial.set_user_attr(SPENT, cost if trained else 0.0)
        if not trained:
            trial.set_user_attr(PLANNED, 0.0)

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
    return {"trial": trial.number, "config": _knob_values(trial.params),
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
    each trial's planned cost is reserved in the storage before it trains, a trial with
    the parameters of a finished or running one is refused, and all share one parent run.
    A KeyboardInterrupt (or a signal turned into one) fails the running trial with the
    reason ``interrupted`` and kills its run before it propagates.
    """
    import optuna

    from mlscale._study_runs import close_orphan_runs, create_parent_run, resume_parent_run
    from mlscale.data import load
    from mlscale.registry import experiment_id

    # Errors only: a failed trial's reason is its user attribute and the progress line,
    # not Optuna's warning with the traceback.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage_url = storage or default_storage()
    name = study_name or pipeline.name

    def on_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        _mark_run(settings, trial.user_attrs.get(RUN_ID), "FAILED", "mlscale.failure",
                  "the worker running this trial stopped (no heartbeat)")

    rdb = _storage(storage_url, heartbeat_interval, on_stale)
    directions = [optuna.study.StudyDirection.MINIMIZE] * len(pipeline.objectives)

    def new_parent_run() -> str:
        return create_parent_run(
            settings, exp_id, name,
            {"mlscale.study": name, "mlscale.storage": masked_url(storage_url)},
            {"pipeline": pipeline.source or pipeline.name,
             "budget_flops": pipeline.budget_flops, "sampler": pipeline.sampler,
             "pruner": pipeline.pruner, "objectives": ",".join(pipeline.objectives),
             "families": ",".join(pipeline.families)})

    # The study's creator names its parent run before a signal can stop it in between.
    with deferred_signals():
        try:
            study, created = open_study(rdb, name, directions)
        except ValueError as error:
            raise MlscaleError(f"study {name}: {error}") from None
        except Exception as error:  # the database went away after it opened
            raise store_error(storage_url, error) from None
        if list(study.directions) != directions:
            raise MlscaleError(f"study {name} exists with other objectives; pass --study NEW")
        exp_id = experiment_id(settings, settings.experiment_name(pipeline.dataset))
        if created:
            parent_run_id = shared_parent_run(study, True, PARENT_RUN, new_parent_run)
    if not created:
        parent_run_id = shared_parent_run(study, False, PARENT_RUN, new_parent_run)
    study.sampler = _sampler(pipeline)
    study.pruner = _pruner(pipeline)
    data = data if data is not None else load(pipeline.dataset)
    resume_parent_run(settings, parent_run_id)
    close_orphan_runs(settings, study, exp_id, parent_run_id)
    objective = _Objective(pipeline, settings, data, parent_run_id, name, on_training)
    objective.cost_prunes_in_a_row = _unaffordable_tail(study, pipeline)
    min_cost = _min_trial_cost(pipeline, objective.costs)
    status = "FAILED"
    try:
        while _should_continue(study, pipeline, objective, min_cost):
            _optimize_one(study, objective, heartbeat_interval)
            _after_trial(study, objective)
            if on_progress is not None:
                on_progress(_progress(study, pipeline))
            if (reason := repeated_failure(study)) is not None:
                status = "FAILED"
                raise MlscaleError(f"search stopped: its last trials all failed with: {reason}")
        summary = _summarise(study, pipeline, storage_url, parent_run_id)
        status = "FINISHED"
        return summary
    except KeyboardInterrupt:
        status = "KILLED"
        _fail_interrupted(objective)
        raise
    finally:
        close_orphan_runs(settings, study, exp_id, parent_run_id)
        if status == "FINISHED":
            _close_parent(settings, study, pipeline, storage_url, parent_run_id, status)
        else:  # already failing: what the store says now must not hide why
            with contextlib.suppress(Exception):
                _close_parent(settings, study, pipeline, storage_url, parent_run_id, status)


def _optimize_one(study: optuna.Study, objective: _Objective, heartbeat_interval: int) -> None:
    """One trial. Where another worker failed it as stale while this one still ran it
    (its heartbeat lagged past the grace period), Optuna refuses the result: say so and go
    on. Its MLflow run and registered model stay; its planned cost stays counted."""
    from optuna.exceptions import UpdateFinishedTrialError

    try:
        study.optimize(objective, n_trials=1, catch=(MlscaleError,))
    except (ValueError, UpdateFinishedTrialError) as error:  # Optuna's two refusals
        taken = objective.current_trial
        if taken is None or not study.get_trials(deepcopy=False)[taken.number].state.is_finished():
            raise
        print(f"warning: trial {taken.number} was failed by another worker (no heartbeat for "
              f"{stale_after_s(heartbeat_interval)} s) while this one ran it "
              f"({first_line(error, 120)}); its MLflow run is kept and the search goes on",
              file=sys.stderr)


def _close_parent(settings: MlflowSettings, study: optuna.Study, pipeline: Pipeline,
                  storage_url: str, parent_run_id: str, status: str) -> None:
    """If no other worker still trains: the summary and plots to the parent run, ended."""
    from mlscale._study_runs import others_running
    from mlscale.registry import client, mlflow_errors

    if others_running(study):
        return
    mlflow_client = client(settings)
    with mlflow_errors(settings):
        summary = _summarise(study, pipeline, storage_url, parent_run_id)
        summary.plots = _log_plots(study, pipeline, mlflow_client, parent_run_id)
        mlflow_client.log_dict(parent_run_id, summary.to_dict(), "search_summary.json")
        mlflow_client.log_metric(parent_run_id, "flops_spent", summary.flops_spent)
        mlflow_client.log_metric(parent_run_id, "trials_complete",
                                 summary.n_trials.get("COMPLETE", 0))
        mlflow_client.set_terminated(parent_run_id, status)


def _after_trial(study: optuna.Study, objective: _Objective) -> None:
    """Count failures in a row: back off (1, 2, 4, 8 s, then until the MLflow store
    answers) and stop after FAILURE_LIMIT."""
    from optuna.trial import TrialState

    trial = objective.current_trial
    frozen = next((t for t in study.get_trials(deepcopy=False)
                   if trial is not None and t.number == trial.number), None)
    if frozen is None:
        return
    if frozen.state != TrialState.FAIL:
        objective.failures_in_a_row = 0
        return
    objective.failures_in_a_row += 1
    reason = frozen.user_attrs.get(FAIL_REASON, "unknown")
    if objective.failures_in_a_row >= FAILURE_LIMIT:
        raise MlscaleError(f"{FAILURE_LIMIT} trials in a row failed; the last (trial "
                           f"{frozen.number}): {reason}")
    time.sleep(2 ** (objective.failures_in_a_row - 1))
    _wait_for_tracking(objective.settings)


def _wait_for_tracking(settings: MlflowSettings) -> None:
    """Return once the MLflow store answers; fail after STORE_WAIT_S of silence."""
    from mlscale.registry import client

    deadline = time.monotonic() + STORE_WAIT_S
    while True:
        try:
            client(settings).search_experiments(max_results=1)
            return
        except Exception as error:  # MlscaleError, or the client's own connection error
            if time.monotonic() > deadline:
                raise MlscaleError(f"MLflow store {settings.tracking_uri} did not answer for "
                                   f"{STORE_WAIT_S:g} s: {first_line(error, 200)}"
                                   ) from None
            time.sleep(2)


def _fail_interrupted(objective: _Objective) -> None:
    """The interrupted trial FAIL, even where Optuna had not yet or no longer held it."""
    from optuna.trial import TrialState

    trial = objective.current_trial
    if trial is None:
        return
    with contextlib.suppress(Exception):  # already told: Optuna failed it itself
        if FAIL_REASON not in trial.user_attrs:
            trial.set_user_attr(FAIL_REASON, "interrupted")
        trial.study.tell(trial, state=TrialState.FAIL)



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
                           for k, v in _knob_values(last.params).items())
        if last.state == TrialState.COMPLETE:
            message = (f"trial {last.number} ({params}): val loss {last.values[0]:.4f}, "
                       f"test acc {attrs.get('test_accuracy', 0):.2%}, "
                       f"{attrs.get(SPENT, 0):.3g} FLOPs")
        else:
            why = attrs.get(PRUNE_REASON, attrs.get(FAIL_REASON))
            message = (f"trial {last.number} ({params}): {last.state.name.lower()}"
                       + (f" ({why})" if why else ""))
    best = min((t.values[0] for t in complete), default=None)
    return SearchProgress(dict(Counter(t.state.name for t in trials)), _spent_flops(trials),
                          pipeline.budget_flops, best, message)

