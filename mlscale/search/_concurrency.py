"""What lets any number of workers share one study: seeds, admission, the parent run.

- Each trial's sampler is seeded from (pipeline seed, trial number): trial numbers are
  handed out by the storage, so two workers never draw from the same random stream, and
  one worker replays a study exactly.
- A trial is *admitted* to train only after it has reserved its planned FLOPs in the
  storage and found neither a budget overrun nor a trial with the same parameters among
  the trials it must yield to (below). Every worker writes its reservation before it
  reads the others', so of two conflicting trials at least one sees the other: a trial
  yields to admitted trials and to reserved trials with lower numbers, and waits for
  reserved, undecided trials with higher numbers (which yield to it) to decide.
- The parent run is created by the worker whose ``create_study`` made the study (the
  storage's unique study name elects exactly one); the others wait for its id (a creator
  killed before naming it leaves the choice to the first worker that waited 30 s).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from mlscale.errors import MlscaleError, first_line
from mlscale.registry._settings import masked_url

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution
    from optuna.samplers import BaseSampler
    from optuna.trial import FrozenTrial

__all__ = ["ADMITTED", "admission_refusal", "open_study", "per_trial_seeds",
           "shared_parent_run", "store_error", "trial_seed"]

ADMITTED = "admitted"
ADMISSION_WAIT_S = 30.0
PARENT_WAIT_S = 30.0


def trial_seed(seed: int, number: int) -> int:
    """A 32-bit seed for trial ``number``: distinct streams for distinct (seed, number)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def per_trial_seeds(make: Callable[[int], BaseSampler], seed: int) -> BaseSampler:
    """A sampler that is ``make(trial_seed(seed, number))`` afresh for every trial.

    TPE, random and NSGA-II keep no state between trials that is not in the study (they
    read the history from the storage), so a fresh one per trial loses nothing and makes
    each proposal depend on its trial number, not on the worker.
    """
    from optuna.samplers import BaseSampler

    class PerTrialSeeds(BaseSampler):
        def __init__(self) -> None:
            self.inner = make(seed)

        def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
            self.inner = make(trial_seed(seed, trial.number))
            self.inner.before_trial(study, trial)

        def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial
                                        ) -> dict[str, BaseDistribution]:
            return self.inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                            search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
            return self.inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                               param_distribution: BaseDistribution) -> Any:
            return self.inner.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study: optuna.Study, trial: FrozenTrial,
                        state: optuna.trial.TrialState, values: Sequence[float] | None) -> None:
            self.inner.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            self.inner.reseed_rng()

    return PerTrialSeeds()


def _conflict(trial: optuna.Trial, cost: float, others: list[FrozenTrial], budget: float,
              committed: Callable[[list[FrozenTrial]], float]) -> str | None:
    from optuna.trial import TrialState

    for other in others:
        if other.state in (TrialState.COMPLETE, TrialState.RUNNING) and \
                other.params == trial.params:
            return f"duplicate: trial {other.number} has the same parameters"
    total = committed(others) + cost
    if total > budget:
        return f"cost: with the trials of other workers {total:.3g} FLOPs would overrun " \
               f"the budget {budget:.3g}"
    return None


def admission_refusal(trial: optuna.Trial, cost: float, budget: float,
                      committed: Callable[[list[FrozenTrial]], float],
                      wait_s: float = ADMISSION_WAIT_S) -> str | None:
    """None when ``trial`` (its reservation written) may train, else why it may not.

    ``committed`` sums the FLOPs a list of trials spent or reserved. An admitted trial is
    marked so in the storage before this returns.
    """
    from optuna.trial import TrialState

    from mlscale.search._attrs import PLANNED  # the reservation a trial holds

    deadline = time.monotonic() + wait_s
    while True:
        settled, pending = [], []
        for other in trial.study.get_trials(deepcopy=False):
            if other.number == trial.number:
                continue
            undecided = other.state == TrialState.RUNNING and not other.user_attrs.get(
                ADMITTED) and other.user_attrs.get(PLANNED, 0.0) > 0
            if undecided and other.number > trial.number:
                pending.append(other)  # it will see this trial's reservation and yield
            elif other.state != TrialState.RUNNING or other.user_attrs.get(PLANNED, 0.0) > 0:
                settled.append(other)
        reason = _conflict(trial, cost, settled, budget, committed)
        if reason is not None:
            return reason
        if _conflict(trial, cost, settled + pending, budget, committed) is None:
            trial.set_user_attr(ADMITTED, True)
            return None
        if time.monotonic() > deadline:
            return f"cost: other workers' trials stayed undecided for {wait_s:g} s"
        time.sleep(0.2)


def open_study(storage: Any, name: str, directions: list[Any]) -> tuple[optuna.Study, bool]:
    """The study ``name``, created if new, and whether this call created it."""
    import optuna

    try:
        return optuna.create_study(storage=storage, study_name=name, directions=directions), True
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(study_name=name, storage=storage), False


def shared_parent_run(study: optuna.Study, created: bool, key: str,
                      create: Callable[[], str], wait_s: float = PARENT_WAIT_S) -> str:
    """The id of the study's one parent run: made by its creator, awaited by the others.

    A study whose creator died before naming a parent run gets one from the first worker
    that has waited ``wait_s`` for it.
    """
    deadline = time.monotonic() + (0.0 if created else wait_s)
    while True:
        existing = study.user_attrs.get(key)
        if existing:
            return str(existing)
        if time.monotonic() >= deadline:
            run_id = create()
            study.set_user_attr(key, run_id)
            return run_id
        time.sleep(0.2)


def store_error(url: str, error: BaseException) -> MlscaleError:
    """A one-line error naming the storage, without its password."""
    shown = masked_url(url)
    return MlscaleError(f"cannot open Optuna storage {shown}: {first_line(error, 300)}")
