"""Many workers on one study: seeds, admission, the ledger, store creation, signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from mlscale.pipeline import parse_pipeline
from mlscale.search import PLANNED, SPENT, committed_flops
from mlscale.search._concurrency import ADMITTED, admission_refusal
from mlscale.search._proposals import _sampler, _suggest

PIPELINE = {
    "name": "tiny", "dataset": "mnist", "families": ["lenet5"],
    "search_space": {"width": {"low": 0.5, "high": 1.0}, "depth": 1,
                     "train_size": {"low": 400, "high": 1500, "log": True},
                     "epochs": {"low": 1, "high": 3}, "lr": {"low": 2e-3, "high": 6e-3}},
    "budget_flops": 2.0e10, "sampler": "random", "seed": 0, "val_size": 500,
}


def _worker_view(storage: str) -> optuna.Study:
    """One worker's handle on the shared study, with its sampler made as run_search does."""
    study = optuna.load_study(study_name="tiny", storage=storage)
    study.sampler = _sampler(parse_pipeline(PIPELINE))
    return study


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_workers_started_together_propose_different_reproducible_trials(
        tmp_path: Path, sampler: str) -> None:
    PIPELINE["sampler"] = sampler
    proposals = []
    for folder in ("a", "b"):
        storage = f"sqlite:///{tmp_path / (folder + '.db')}"
        optuna.create_study(study_name="tiny", storage=storage)
        first, second = _worker_view(storage), _worker_view(storage)  # same instant
        pipeline = parse_pipeline(PIPELINE)
        proposals.append([_suggest(view.ask(), pipeline) for view in (first, second, first)])
    PIPELINE["sampler"] = "random"
    assert proposals[0][0] != proposals[0][1] != proposals[0][2] != proposals[0][0]
    assert proposals[0] == proposals[1], "the same trial numbers replay the same proposals"


def _trial(number_params: dict[str, float], state: TrialState, **attrs: object
           ) -> optuna.trial.FrozenTrial:
    return create_trial(state=state, params=number_params, value=1.0 if state ==
                        TrialState.COMPLETE else None,
                        distributions={k: FloatDistribution(0, 1) for k in number_params},
                        user_attrs=dict(attrs))


def test_a_worker_that_died_mid_training_counts_its_whole_plan() -> None:
    died = _trial({"x": 0.1}, TrialState.FAIL, planned_flops=3.46e10, flops_spent=8.78e9)
    assert committed_flops([died]) == 3.46e10
    assert committed_flops([_trial({"x": 0.2}, TrialState.FAIL, flops_spent=0.0)]) == 0.0


def _study_with(tmp_path: Path, *trials: optuna.trial.FrozenTrial) -> optuna.Study:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="s")
    for trial in trials:
        study.add_trial(trial)
    return study


def _reserved(study: optuna.Study, x: float, cost: float) -> optuna.Trial:
    study.enqueue_trial({"x": x})
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    trial.set_user_attr(PLANNED, cost)
    return trial


def test_admission_refuses_duplicates_and_overruns_and_admits_the_rest(tmp_path: Path) -> None:
    study = _study_with(tmp_path, _trial({"x": 0.5}, TrialState.COMPLETE, flops_spent=4.0))
    duplicate = _reserved(study, 0.5, 1.0)
    assert admission_refusal(duplicate, 1.0, 10.0, committed_flops).startswith("duplicate")
    study.tell(duplicate, state=TrialState.PRUNED)
    too_dear = _reserved(study, 0.6, 7.0)
    assert admission_refusal(too_dear, 7.0, 10.0, committed_flops).startswith("cost")
    study.tell(too_dear, state=TrialState.PRUNED)
    fine = _reserved(study, 0.7, 5.0)
    assert admission_refusal(fine, 5.0, 10.0, committed_flops) is None
    assert study.trials[fine.number].user_attrs[ADMITTED] is True


def test_of_two_reserved_trials_the_lower_number_waits_and_the_higher_yields(
        tmp_path: Path) -> None:
    study = _study_with(tmp_path)
    lower, higher = _reserved(study, 0.5, 6.0), _reserved(study, 0.5, 6.0)
    assert admission_refusal(higher, 6.0, 10.0, committed_flops).startswith("duplicate")
    # the lower waits for the undecided higher one (which yields): here it never decides
    reason = admission_refusal(lower, 6.0, 10.0, committed_flops, wait_s=0.5)
    assert reason is not None and "undecided" in reason
    higher.set_user_attr(PLANNED, 0.0)
    study.tell(higher, state=TrialState.PRUNED)
    assert admission_refusal(lower, 6.0, 10.0, committed_flops) is None
    assert committed_flops(study.trials) == 6.0
    assert SPENT not in study.trials[lower.number].user_attrs


@pytest.mark.slow
def test_two_processes_open_a_fresh_sqlite_store_at_once(tmp_path: Path) -> None:
    """Three writers (train and search create a store) open one fresh SQLite store at once."""
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    env = os.environ | {"MLFLOW_TRACKING_URI": uri}
    go = tmp_path / "go"
    wait = (f"import os, time, sys\nwhile not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
            "from mlscale.registry import client, load_settings\n"
            "print(client(load_settings()).search_experiments())\n")
    workers = [subprocess.Popen([sys.executable, "-c", wait], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for _ in range(3)]
    time.sleep(3)  # all three have imported mlscale and wait for the same instant
    go.touch()
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err[-2000:]
        assert "Default" in out  # the store opened (created and migrated once)


@pytest.mark.slow
def test_sigterm_stops_a_worker_with_one_line_and_143(tmp_path: Path) -> None:
    script = ("from mlscale._signals import stop_on_signals\nimport time, sys\n"
              "from mlscale.cli._search import _Stopped\n"
              "try:\n    with stop_on_signals():\n        print('ready', flush=True)\n"
              "        time.sleep(60)\nexcept KeyboardInterrupt as stop:\n"
              "    print(_Stopped.by_signal(stop), file=sys.stderr); sys.exit(stop.exit_code)\n")
    for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        worker = subprocess.Popen([sys.executable, "-c", script], text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        worker.send_signal(signum)
        _, err = worker.communicate(timeout=30)
        assert worker.returncode == code
        assert err.strip().startswith(f"interrupted by {signal.Signals(signum).name}")
        assert len(err.strip().splitlines()) == 1
