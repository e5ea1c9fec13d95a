"""The MLflow side of a study that many workers share: one parent run, closed runs.

The parent run is never a worker's active MLflow run (MLflow would end it when that
worker exits); workers log to it by id and the last worker out ends it. Trial runs a
worker could not close (its store was down, it was killed) are closed from the study.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from mlscale.registry import MlflowSettings

__all__ = ["close_orphan_runs", "create_parent_run", "end_parent_if_last", "resume_parent_run"]

def create_parent_run(settings: MlflowSettings, exp_id: str, name: str, tags: dict[str, str],
                      params: dict[str, Any]) -> str:
    """A new RUNNING parent run for study ``name``, with the pipeline's figures as params."""
    from mlflow.entities import Param

    from mlscale.registry import client, mlflow_errors

    mlflow_client = client(settings)
    with mlflow_errors(settings):
        run = mlflow_client.create_run(exp_id, run_name=f"search-{name}", tags=tags)
        mlflow_client.log_batch(run.info.run_id,
                                params=[Param(k, str(v)) for k, v in params.items()])
    return str(run.info.run_id)


def resume_parent_run(settings: MlflowSettings, run_id: str) -> None:
    """Mark the parent run RUNNING again (a resumed or joined study)."""
    from mlscale.registry import client, mlflow_errors

    mlflow_client = client(settings)
    with mlflow_errors(settings):
        if mlflow_client.get_run(run_id).info.status != "RUNNING":
            mlflow_client.update_run(run_id, status="RUNNING")


def others_running(study: optuna.Study) -> bool:
    """Whether another worker still has a trial running (stale trials failed first)."""
    import warnings

    import optuna
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def end_parent_if_last(settings: MlflowSettings, study: optuna.Study, run_id: str,
                       status: str) -> bool:
    """End the parent run with ``status`` unless other workers still train; True if ended."""
    from mlscale.registry import client

    if others_running(study):
        return False
    client(settings).set_terminated(run_id, status)
    return True


def close_orphan_runs(settings: MlflowSettings, study: optuna.Study, exp_id: str,
                      parent_run_id: str) -> int:
    """Close the RUNNING runs under the parent whose trials have ended; how many.

    Best effort: a store that is down leaves them for the next worker to close.
    """
    from optuna.trial import TrialState

    from mlscale.registry import FAILURE_TAG, all_pages, client
    from mlscale.search._failures import FAIL_REASON

    mlflow_client = client(settings)
    states = {t.number: t for t in study.get_trials(deepcopy=False)}
    closed = 0
    query = (f"tags.`mlflow.parentRunId` = '{parent_run_id}' "
             "and attributes.status = 'RUNNING'")
    with contextlib.suppress(Exception):
        runs = all_pages(lambda **page: mlflow_client.search_runs(
            [exp_id], query, **page), 1000)
        for run in runs:
            number = run.data.tags.get("mlscale.trial", "")
            trial = states.get(int(number)) if number.isdigit() else None
            if trial is None or trial.state == TrialState.RUNNING:
                continue
            reason = str(trial.user_attrs.get(FAIL_REASON, "the trial ended"))
            status = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED"}.get(
                trial.state, "KILLED" if reason.startswith("interrupted") else "FAILED")
            if status != "FINISHED":
                mlflow_client.set_tag(run.info.run_id, FAILURE_TAG, reason)
            mlflow_client.set_terminated(run.info.run_id, status)
            closed += 1
    return closed
