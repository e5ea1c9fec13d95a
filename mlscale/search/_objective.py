"""One trial: its proposal priced, trained and registered through the workflow, or pruned."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mlscale.errors import MlscaleError, first_line
from mlscale.pipeline import Pipeline
from mlscale.search._attrs import PLANNED, PRUNE_REASON, RUN_ID, SPENT, WORKER
from mlscale.search._concurrency import (
    admission_refusal,
)
from mlscale.search._costs import _Costs, _samples, committed_flops
from mlscale.search._failures import FAIL_REASON
from mlscale.search._proposals import _suggest

if TYPE_CHECKING:
    import optuna

    from mlscale.data import Splits
    from mlscale.registry import MlflowSettings
    from mlscale.train import EpochMetrics, Progress
    from mlscale.workflow import TrainingOutcome


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
                 on_training: Callable[[Progress], None] | None, costs: _Costs) -> None:
        self.pipeline, self.settings, self.data = pipeline, settings, data
        self.parent_run_id, self.study_name = parent_run_id, study_name
        self.on_training = on_training
        self.costs = costs
        self.cost_prunes_in_a_row = 0
        self.failures_in_a_row = 0
        self.current_trial: optuna.Trial | None = None

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        self.current_trial = trial
        try:
            return self._run(trial)
        except (KeyboardInterrupt, MlscaleError) as stop:  # also while proposing or pricing
            if FAIL_REASON not in trial.user_attrs:
                self._record_failure(trial, stop, trained=False, cost=0.0)
            raise

    def _run(self, trial: optuna.Trial) -> float | tuple[float, float]:
        import optuna

        from mlscale.train import TrainConfig
        from mlscale.workflow import train_and_register

        trial.set_user_attr(WORKER, f"{socket.gethostname()}:{os.getpid()}")
        try:
            params = _suggest(trial, self.pipeline)
        except ValueError as error:  # Optuna refused the proposal: this trial fails, said why
            raise MlscaleError(first_line(error, 500)) from error
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
                    reason = f"pruner: val loss {metrics.val_loss:.4f} at epoch {metrics.epoch:.3g}"
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
