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

from mlscale.search._attrs import (
    PARENT_RUN,
    PLANNED,
    PRUNE_REASON,
    RUN_ID,
    SPENT,
    WORKER,
    stale_after_s,
)
from mlscale.search._costs import committed_flops
from mlscale.search._failures import FAIL_REASON
from mlscale.search._run import default_storage, run_search, study_summary
from mlscale.search._summary import SearchProgress, SearchSummary, TrialMetrics, TrialRow

__all__ = ["FAIL_REASON", "PARENT_RUN", "PLANNED", "PRUNE_REASON", "RUN_ID", "SPENT", "WORKER",
           "SearchProgress", "SearchSummary", "TrialMetrics", "TrialRow", "committed_flops",
           "default_storage", "run_search", "stale_after_s", "study_summary"]
