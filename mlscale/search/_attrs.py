"""The trial user attributes that link trials to runs and keep the budget ledger, and the
search's limits."""

from __future__ import annotations

# Trial user attributes (the trial <-> run links and the budget ledger).
RUN_ID = "mlflow_run_id"
PLANNED = "planned_flops"
SPENT = "flops_spent"
PRUNE_REASON = "prune_reason"
WORKER = "worker"  # host:pid of the process that ran the trial
PARENT_RUN = "mlflow_parent_run_id"
# Study user attributes.
DATASET = "dataset"  # the name of the dataset the study's trials train on
DATA_FINGERPRINT = "dataset_fingerprint"  # a user source's content hash (none: built-in)
STOP_REASON = "stop_reason"  # why the last worker to finish ended the search
COST_PRUNE_LIMIT = 30  # consecutive unaffordable proposals that end a search
FAILURE_LIMIT = 5  # consecutive failed trials (a store down, a broken model) that stop a worker
STORE_WAIT_S = 120.0  # how long a worker waits for an MLflow store that stopped answering
# A trial's heartbeat may lag well behind its interval on a loaded machine (three workers,
# PostgreSQL and an MLflow server on two cores lagged past 2 s): never fail one sooner.
STALE_AFTER_MIN_S = 10


def stale_after_s(heartbeat_interval: int) -> int:
    """Seconds without a heartbeat after which another worker fails a running trial."""
    return max(2 * heartbeat_interval, STALE_AFTER_MIN_S)
