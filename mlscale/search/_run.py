"""``run_search``: open the study, resume it, run trials until the budget is spent."""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mlscale._signals import deferred_signals
from mlscale.errors import MlscaleError, first_line
from mlscale.pipeline import Pipeline
from mlscale.registry._settings import check_database_scheme, masked_url
from mlscale.search._attrs import (
    COST_PRUNE_LIMIT,
    DATA_FINGERPRINT,
    DATASET,
    FAILURE_LIMIT,
    PARENT_RUN,
    PRUNE_REASON,
    RUN_ID,
    SPENT,
    STOP_REASON,
    STORE_WAIT_S,
    stale_after_s,
)
from mlscale.search._concurrency import (
    open_study,
    shared_parent_run,
    store_error,
)
from mlscale.search._costs import _Costs, _min_trial_cost, _spent_flops, committed_flops
from mlscale.search._failures import FAIL_REASON, repeated_failure
from mlscale.search._objective import _mark_run, _Objective
from mlscale.search._proposals import _knob_values, _pruner, _sampler, resume_conflict
from mlscale.search._summary import SearchProgress, SearchSummary, _log_plots, _summarise

if TYPE_CHECKING:
    import optuna

    from mlscale.data import Splits
    from mlscale.registry import MlflowSettings
    from mlscale.train import Progress


def default_storage() -> str:
    """``registry/optuna.db`` beside the MLflow config in force (``config_dir``), so the
    study and its MLflow runs live in the same project whichever folder a search starts in."""
    from mlscale.registry import config_dir

    folder = config_dir() / "registry"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'optuna.db'}"


def _storage(url: str, heartbeat_interval: int, on_stale: Callable[..., None]) -> Any:
    import optuna
    from filelock import FileLock
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    if "://" not in url:
        raise MlscaleError(f"storage URL '{url}' is not an SQLAlchemy URL such as "
                           "sqlite:///path.db or postgresql://user@host/db")
    check_database_scheme(url)
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
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import SQLAlchemyError

    from mlscale.data import load
    from mlscale.names import dataset_name
    from mlscale.registry import check_one_dataset, experiment_id
    from mlscale.search._study_runs import close_orphan_runs, create_parent_run, resume_parent_run
    from mlscale.sources import resolved_source

    # Errors only: a failed trial's reason is its user attribute and the progress line,
    # not Optuna's warning with the traceback.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage_url = storage or default_storage()
    name = study_name or pipeline.name

    def on_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        _mark_run(settings, trial.user_attrs.get(RUN_ID), "FAILED", "mlscale.failure",
                  "the worker running this trial stopped (no heartbeat)")

    costs = _Costs(pipeline)
    min_cost = _min_trial_cost(pipeline, costs)
    for limit, amount in (("a budget", pipeline.budget_flops),
                          ("a per-trial cap", pipeline.trial_flops_cap)):
        if amount and min_cost > amount:
            raise MlscaleError(f"{limit} of {amount:.3g} training FLOPs is too small: the "
                               f"cheapest trial this pipeline allows costs {min_cost:.3g}")
    data = data if data is not None else load(pipeline.dataset)
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

    exp_name = settings.experiment_name(pipeline.dataset)
    exp_id = experiment_id(settings, exp_name)
    if data.info.fingerprint:  # a user source: its experiment must hold only its data
        check_one_dataset(settings, (exp_id, exp_name), None,
                          resolved_source(pipeline.dataset), data.info.fingerprint)
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
        if not created and (conflict := resume_conflict(study, pipeline,
                                                        data.info.fingerprint)) is not None:
            raise MlscaleError(conflict)
        if DATASET not in study.user_attrs:  # new, or begun before studies named their data
            study.set_user_attr(DATASET, dataset_name(pipeline.dataset))
            if data.info.fingerprint:
                study.set_user_attr(DATA_FINGERPRINT, data.info.fingerprint)
        if created:
            parent_run_id = shared_parent_run(study, True, PARENT_RUN, new_parent_run)
    if not created:
        parent_run_id = shared_parent_run(study, False, PARENT_RUN, new_parent_run)
        trials = study.get_trials(deepcopy=False)
        if finished := sum(t.state.is_finished() for t in trials):  # a resume, not a join
            print(f"study {name} has {finished} finished trial{'s' if finished > 1 else ''}; "
                  f"{committed_flops(trials):.3g} of {pipeline.budget_flops:.3g} FLOPs spent "
                  "or reserved by running trials", file=sys.stderr)
    study.sampler = _sampler(pipeline)
    study.pruner = _pruner(pipeline)
    resume_parent_run(settings, parent_run_id)
    close_orphan_runs(settings, study, exp_id, parent_run_id)
    objective = _Objective(pipeline, settings, data, parent_run_id, name, on_training, costs)
    objective.cost_prunes_in_a_row = _unaffordable_tail(study, pipeline)
    status, stop = "FAILED", None
    try:
        while (stop := _stop_reason(study, pipeline, objective.cost_prunes_in_a_row,
                                    min_cost)) is None:
            _optimize_one(study, objective, heartbeat_interval)
            _after_trial(study, objective)
            if on_progress is not None:
                on_progress(_progress(study, pipeline, objective.current_trial))
            if (reason := repeated_failure(study)) is not None:
                status = "FAILED"
                raise MlscaleError(f"search stopped: its last trials all failed with: {reason}")
        summary = _summarise(study, pipeline, storage_url, parent_run_id, stop)
        study.set_user_attr(STOP_REASON, stop)
        status = "FINISHED"
        return summary
    except (StorageInternalError, SQLAlchemyError) as error:  # the storage went away
        raise MlscaleError(f"Optuna storage {masked_url(storage_url)} failed: "
                           f"{first_line(error, 300)}; run the same command again when it "
                           "answers: finished trials are kept") from None
    except KeyboardInterrupt:
        status = "KILLED"
        _fail_interrupted(objective)
        raise
    finally:
        close_orphan_runs(settings, study, exp_id, parent_run_id)
        if status == "FINISHED":
            _close_parent(settings, study, pipeline, storage_url, parent_run_id, status,
                          stop or "")
        else:  # already failing: what the store says now must not hide why
            with contextlib.suppress(Exception):
                _close_parent(settings, study, pipeline, storage_url, parent_run_id, status, "")


def study_summary(pipeline: Pipeline, *, storage: str | None = None,
                  study_name: str | None = None) -> SearchSummary:
    """The summary of the pipeline's study as the storage holds it now (what the workers
    of ``mlscale search --workers N`` leave behind, printed once for all of them)."""
    import optuna

    storage_url = storage or default_storage()
    name = study_name or pipeline.name
    try:
        study = optuna.load_study(study_name=name, storage=storage_url)
    except KeyError:
        raise MlscaleError(f"study {name} is not in {masked_url(storage_url)}") from None
    except Exception as error:  # SQLAlchemy's many connection/URL errors
        raise store_error(storage_url, error) from None
    return _summarise(study, pipeline, storage_url, str(study.user_attrs.get(PARENT_RUN, "")),
                      str(study.user_attrs.get(STOP_REASON, "")))


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
                  storage_url: str, parent_run_id: str, status: str, stop_reason: str) -> None:
    """If no other worker still trains: the summary and plots to the parent run, ended."""
    from mlscale.registry import client, mlflow_errors
    from mlscale.search._study_runs import others_running

    if others_running(study):
        return
    mlflow_client = client(settings)
    with mlflow_errors(settings):
        summary = _summarise(study, pipeline, storage_url, parent_run_id, stop_reason)
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


def _stop_reason(study: optuna.Study, pipeline: Pipeline, cost_prunes_in_a_row: int,
                 min_cost: float) -> str | None:
    """Why the search ends now, or None while it goes on."""
    remaining = pipeline.budget_flops - committed_flops(study.get_trials(deepcopy=False))
    if remaining < min_cost:
        return (f"the budget is spent: {max(remaining, 0.0):.3g} FLOPs left, less than the "
                f"cheapest trial ({min_cost:.3g})")
    if cost_prunes_in_a_row >= COST_PRUNE_LIMIT:
        return (f"the last {cost_prunes_in_a_row} proposals were unaffordable or repeats "
                f"({remaining:.3g} FLOPs left)")
    sampler = study.sampler
    if hasattr(sampler, "is_exhausted") and sampler.is_exhausted(study):
        return "every point of the grid has been tried"
    return None


def _progress(study: optuna.Study, pipeline: Pipeline, mine: optuna.Trial | None
              ) -> SearchProgress:
    """The ledger, and a line on ``mine``: this worker's last trial, not the study's (which
    another worker may still be running)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    last = trials[mine.number] if mine is not None and mine.number < len(trials) else None
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
