"""The FLOPs-budgeted search on real training, a real Optuna storage and MLflow store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from _cli import run_main
from click.testing import CliRunner
from mlflow import MlflowClient
from optuna.trial import TrialState

from mlscale.cli import cli
from mlscale.data import Splits
from mlscale.pipeline import parse_pipeline
from mlscale.registry import load_settings
from mlscale.search import PLANNED, PRUNE_REASON, RUN_ID, SPENT, run_search, stale_after_s

LENET_TRAIN_FLOPS = 2_263_920  # per sample, at width 1


def _tiny(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "tiny", "dataset": "mnist", "families": ["lenet5"],
        "search_space": {"width": {"low": 0.5, "high": 1.0}, "depth": 1,
                         "train_size": {"low": 400, "high": 1500, "log": True},
                         "epochs": {"low": 1, "high": 3},
                         "lr": {"low": 2e-3, "high": 6e-3, "log": True}},
        "budget_flops": 2.0e10, "trial_flops_cap": 8.0e9, "sampler": "random",
        "pruner": "median", "seed": 0, "val_size": 500, "latency_seconds": 0.01,
    }
    raw.update(overrides)
    return raw


def _storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def _trials(storage: str, study: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=storage).get_trials()


def test_the_budget_is_never_exceeded_and_unaffordable_trials_never_train(
    fresh_store: str, tmp_path: Path, mnist: Splits
) -> None:
    storage = _storage(tmp_path)
    summary = run_search(parse_pipeline(_tiny()), load_settings(), storage=storage, data=mnist)
    trials = _trials(storage)
    assert summary.flops_spent <= summary.budget_flops
    client = MlflowClient(fresh_store, fresh_store)
    trained = [t for t in trials if RUN_ID in t.user_attrs]
    assert sum(t.user_attrs[SPENT] for t in trials) == pytest.approx(summary.flops_spent)
    runs_flops = sum(client.get_run(t.user_attrs[RUN_ID]).data.metrics.get("train_flops", 0)
                     for t in trained)
    assert runs_flops <= summary.budget_flops
    cost_pruned = [t for t in trials if t.user_attrs.get(PRUNE_REASON, "").startswith("cost")]
    assert cost_pruned, "the cap and the budget should have refused some proposals"
    for trial in cost_pruned:
        assert RUN_ID not in trial.user_attrs and trial.user_attrs[SPENT] == 0
    # what is left cannot buy the cheapest trial, or the sampler kept proposing too much
    assert summary.n_trials.get("COMPLETE", 0) >= 2
    assert summary.best is not None and summary.best.model_uri.startswith("models:/")
    # run again, a finished search stays finished: no new proposals to refuse
    run_search(parse_pipeline(_tiny()), load_settings(), storage=storage, data=mnist)
    assert len(_trials(storage)) == len(trials)


def test_trials_and_runs_point_to_each_other_under_the_parent_run(
    fresh_store: str, tmp_path: Path, mnist: Splits
) -> None:
    storage = _storage(tmp_path)
    summary = run_search(parse_pipeline(_tiny(budget_flops=8e9)), load_settings(),
                         storage=storage, data=mnist)
    client = MlflowClient(fresh_store, fresh_store)
    parent = client.get_run(summary.parent_run_id)
    assert parent.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(summary.parent_run_id, "plots")}
    assert "plots/optimization_history.png" in artifacts
    for trial in _trials(storage):
        if RUN_ID not in trial.user_attrs:
            continue
        run = client.get_run(trial.user_attrs[RUN_ID])
        assert run.data.tags["mlflow.parentRunId"] == summary.parent_run_id
        assert run.data.tags["mlscale.study"] == "tiny"
        assert run.data.tags["mlscale.trial"] == str(trial.number)
        expected = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED"}[trial.state]
        assert run.info.status == expected


def test_a_trial_failed_by_another_worker_while_it_trains_does_not_stop_the_search(
    fresh_store: str, tmp_path: Path, mnist: Splits, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a worker whose heartbeat lagged past the grace period meets: another worker
    failed its running trial. Its result is refused, it says so, and it goes on."""
    storage = _storage(tmp_path)
    other_worker = optuna.storages.RDBStorage(storage)
    taken: list[int] = []

    def fail_it_from_outside(progress: object) -> None:
        if taken:
            return
        study_id = other_worker.get_study_id_from_name("tiny")
        running = [t for t in other_worker.get_all_trials(study_id)
                   if t.state == TrialState.RUNNING]
        if running:
            taken.append(running[0].number)
            other_worker.set_trial_state_values(running[0]._trial_id, TrialState.FAIL)

    summary = run_search(parse_pipeline(_tiny(budget_flops=8e9)), load_settings(),
                         storage=storage, data=mnist, on_training=fail_it_from_outside)
    assert taken, "the search trained no trial"
    trials = _trials(storage)
    assert trials[taken[0]].state == TrialState.FAIL
    assert summary.n_trials.get("COMPLETE", 0) >= 1
    assert f"warning: trial {taken[0]} was failed by another worker" in capsys.readouterr().err


def test_a_grid_pipeline_visits_each_point_once(fresh_store: str, tmp_path: Path,
                                                mnist: Splits) -> None:
    grid = _tiny(sampler="grid", pruner="none", budget_flops=1e11, search_space={
        "width": [0.5, 1.0], "depth": [1], "train_size": [300, 600], "epochs": [1],
        "lr": [3e-3]})
    storage = _storage(tmp_path)
    summary = run_search(parse_pipeline(grid), load_settings(), storage=storage, data=mnist)
    points = [(t.params["width"], t.params["train_size"]) for t in _trials(storage)]
    assert sorted(points) == [(0.5, 300), (0.5, 600), (1.0, 300), (1.0, 600)]
    assert summary.n_trials == {"COMPLETE": 4}


def test_two_objectives_give_a_pareto_front(fresh_store: str, tmp_path: Path,
                                            mnist: Splits) -> None:
    pareto = _tiny(sampler="nsga2", pruner="none", objectives=["val_loss", "latency_p90_ms"],
                   budget_flops=1.2e10)
    summary = run_search(parse_pipeline(pareto), load_settings(), storage=_storage(tmp_path),
                         data=mnist)
    assert summary.pareto_front
    for row in summary.pareto_front:
        assert row.metrics.latency_p90_ms > 0


def _write_pipeline(tmp_path: Path, **overrides: Any) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(_tiny(**overrides)))
    return path


def _search_command(pipeline: Path, storage: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mlscale", "search", str(pipeline), "--storage", storage,
            "--heartbeat", "1", *extra]


@pytest.mark.slow
def test_a_killed_search_resumes_with_every_finished_trial(fresh_store: str,
                                                           tmp_path: Path) -> None:
    pipeline = _write_pipeline(tmp_path, budget_flops=3.0e10)
    storage = _storage(tmp_path)
    worker = subprocess.Popen(_search_command(pipeline, storage), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    victim = None
    while victim is None and time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.05)
        try:
            trials = _trials(storage)
        except (KeyError, optuna.exceptions.StorageInternalError):
            continue
        if any(t.state == TrialState.COMPLETE for t in trials):
            victim = next((t for t in trials if t.state == TrialState.RUNNING
                           and RUN_ID in t.user_attrs), None)
    assert victim is not None, "no trial was caught mid-training"
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    before = {t.number: t for t in _trials(storage) if t.state == TrialState.COMPLETE}
    time.sleep(stale_after_s(1) + 0.5)  # past the grace period of a 1 s heartbeat

    resumed = subprocess.run(_search_command(pipeline, storage, "--json"), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    after = {t.number: t for t in _trials(storage)}
    for number, trial in before.items():
        assert after[number].state == TrialState.COMPLETE
        assert after[number].values == trial.values
    assert after[victim.number].state == TrialState.FAIL
    client = MlflowClient(fresh_store, fresh_store)
    killed_run = client.get_run(victim.user_attrs[RUN_ID])
    assert killed_run.info.status == "FAILED"
    assert "no heartbeat" in killed_run.data.tags["mlscale.failure"]
    for trial in before.values():
        assert client.get_run(trial.user_attrs[RUN_ID]).info.status == "FINISHED"
    assert summary["flops_spent"] <= summary["budget_flops"]
    assert len(after) > len(before) + 1, "the resumed study went on towards its budget"
    # the killed trial's whole plan stays counted: the budget is a hard ceiling
    spent = sum(t.user_attrs.get(SPENT, t.user_attrs.get(PLANNED, 0)) for t in after.values()
                if t.state != TrialState.RUNNING)
    assert spent <= summary["budget_flops"]


@pytest.mark.slow
def test_two_workers_share_one_study_without_duplicates(fresh_store: str,
                                                        tmp_path: Path) -> None:
    pipeline = _write_pipeline(tmp_path, budget_flops=2.4e10)
    storage = _storage(tmp_path)
    optuna.storages.RDBStorage(storage)  # the schema; the two workers race for the study
    workers = [subprocess.Popen(_search_command(pipeline, storage, "--json"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err
    trials = _trials(storage)
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(trials)))
    run_ids = [t.user_attrs[RUN_ID] for t in trials if RUN_ID in t.user_attrs]
    assert len(run_ids) == len(set(run_ids))
    client = MlflowClient(fresh_store, fresh_store)
    for run_id in run_ids:
        assert client.get_run(run_id).info.status in ("FINISHED", "KILLED")
    assert sum(t.user_attrs.get(SPENT, 0) for t in trials) <= 2.4e10
    assert all(t.state != TrialState.RUNNING for t in trials)


def test_search_json_and_bad_input(fresh_store: str, tmp_path: Path) -> None:
    pipeline = _write_pipeline(tmp_path, budget_flops=6e9)
    result = CliRunner().invoke(cli, ["search", str(pipeline), "--storage",
                                      _storage(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    for key in ("study", "budget_flops", "flops_spent", "n_trials", "best"):
        assert key in payload
    assert payload["flops_spent"] <= 6e9
    assert {"config", "metrics", "model_uri"} <= payload["best"].keys()

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    result = CliRunner().invoke(cli, ["search", str(bad)])
    assert result.exit_code != 0
    result = CliRunner().invoke(cli, ["search", str(pipeline), "--budget-flops", "-1"])
    assert result.exit_code != 0
    assert "'-1' is not a positive finite number" in result.output


@pytest.mark.slow
def test_two_local_workers_print_their_trials_and_one_summary(fresh_store: str,
                                                              tmp_path: Path) -> None:
    grid = {"width": [0.5, 1.0], "depth": [1], "train_size": [400, 800], "epochs": [1]}
    pipeline = _write_pipeline(tmp_path, sampler="grid", pruner="none", budget_flops=1e11,
                               search_space=grid)
    done = subprocess.run(_search_command(pipeline, _storage(tmp_path), "--workers", "2"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    finished = [line for line in done.stdout.splitlines()
                if line.startswith("trial ") and "test acc" in line]
    assert len(finished) == 4, done.stdout  # each grid point trained once, by either worker
    assert done.stdout.count("study tiny: 4 complete") == 1, done.stdout
    assert done.stdout.count("best per family") == 1, done.stdout


def test_a_budget_below_the_cheapest_trial_is_refused_before_anything_is_written(
    fresh_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The cheapest trial _tiny allows: LeNet-5 at width 0.5, 1 epoch of 400 samples."""
    pipeline = _write_pipeline(tmp_path, budget_flops=1e8)
    code, _, err = run_main(capsys, "search", str(pipeline), "--storage", _storage(tmp_path))
    assert code == 1
    assert err.startswith("Error: a budget of 1e+08 training FLOPs is too small: the "
                          "cheapest trial this pipeline allows costs "), err
    assert err.count("\n") == 1
    assert not (tmp_path / "optuna.db").exists()
    assert not (tmp_path / "mlflow.db").exists()
    capped = _write_pipeline(tmp_path, trial_flops_cap=1e8)
    code, _, err = run_main(capsys, "search", str(capped), "--storage", _storage(tmp_path))
    assert code == 1
    assert err.startswith("Error: a per-trial cap of 1e+08 training FLOPs is too small"), err
    assert not (tmp_path / "optuna.db").exists()


def test_a_search_says_why_it_stopped(fresh_store: str, tmp_path: Path, mnist: Splits,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    summary = run_search(parse_pipeline(_tiny(budget_flops=2e9)), load_settings(),
                         storage=_storage(tmp_path), data=mnist)
    assert summary.stop_reason.startswith("the budget is spent: "), summary.stop_reason
    grid = _tiny(name="grid", sampler="grid", pruner="none", budget_flops=1e11, search_space={
        "width": [0.5], "depth": [1], "train_size": [300], "epochs": [1], "lr": [3e-3]})
    summary = run_search(parse_pipeline(grid), load_settings(), storage=_storage(tmp_path),
                         data=mnist)
    assert summary.stop_reason == "every point of the grid has been tried"
    code, out, _ = run_main(capsys, "search", str(_write_pipeline(tmp_path, **grid)),
                            "--storage", _storage(tmp_path))
    assert code == 0
    assert "stopped: every point of the grid has been tried" in out


def test_a_study_resumed_with_other_choices_is_refused_without_a_trial(
    fresh_store: str, tmp_path: Path, mnist: Splits, capsys: pytest.CaptureFixture[str]
) -> None:
    """Optuna fails every trial that proposes a categorical with other choices than the
    study's first trials: a changed pipeline is told so before it starts a trial."""
    storage = _storage(tmp_path)
    run_search(parse_pipeline(_tiny(budget_flops=2e9)), load_settings(), storage=storage,
               data=mnist)
    before = [(t.number, t.state) for t in _trials(storage)]
    changed = _write_pipeline(tmp_path, families=["lenet5", "vgg_mini"], budget_flops=4e9)
    code, _, err = run_main(capsys, "search", str(changed), "--storage", storage)
    assert code == 1
    assert err == ("Error: study tiny searched family over the choices lenet5; this pipeline "
                   "has the choices lenet5, vgg_mini: pass --study NEW for the changed search, "
                   "or run the pipeline the study began with\n")
    assert [(t.number, t.state) for t in _trials(storage)] == before
    client = MlflowClient(fresh_store)
    experiment = client.get_experiment_by_name("mlscale-mnist")
    assert experiment is not None
    parent = client.search_runs([experiment.experiment_id],
                                filter_string="attributes.run_name = 'search-tiny'")
    assert [run.info.status for run in parent] == ["FINISHED"]


def test_a_proposal_optuna_refuses_fails_its_trial_with_optunas_reason(
    fresh_store: str, tmp_path: Path, mnist: Splits, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the up-front check (switched off here), a refused proposal is the trial's own
    failure, never reported as another worker's doing."""
    import mlscale.search._run

    storage = _storage(tmp_path)
    run_search(parse_pipeline(_tiny(budget_flops=2e9)), load_settings(), storage=storage,
               data=mnist)
    monkeypatch.setattr(mlscale.search._run, "resume_conflict", lambda *args: None)
    changed = _write_pipeline(tmp_path, families=["lenet5", "vgg_mini"], budget_flops=4e9)
    code, out, err = run_main(capsys, "search", str(changed), "--storage", storage)
    assert code == 1
    assert err.endswith("\nError: search stopped: its last trials all failed with: "
                        "CategoricalDistribution does not support dynamic value space.\n"), err
    assert "another worker" not in out + err


def test_a_study_resumed_on_another_dataset_is_refused(
    fresh_store: str, tmp_path: Path, mnist: Splits, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = _storage(tmp_path)
    run_search(parse_pipeline(_tiny(budget_flops=2e9)), load_settings(), storage=storage,
               data=mnist)
    assert optuna.load_study(study_name="tiny", storage=storage).user_attrs["dataset"] == "mnist"
    before = _trials(storage)
    other = _write_pipeline(tmp_path, dataset="fashion-mnist", budget_flops=4e9)
    code, _, err = run_main(capsys, "search", str(other), "--storage", storage)
    assert code == 1
    assert err == ("Error: study tiny trains on mnist; this pipeline names fashion-mnist: "
                   "pass --study NEW for the other dataset\n")
    assert len(_trials(storage)) == len(before)
    code, _, err = run_main(capsys, "search", str(_write_pipeline(tmp_path, budget_flops=2e9)),
                            "--storage", storage)
    assert code == 0
    assert err.startswith(f"study tiny has {len(before)} finished trials; "), err


def test_a_family_that_fails_at_some_dials_fails_those_trials_with_the_reason(
    fresh_store: str, tmp_path: Path, mnist: Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's family that breaks only in training, and only above width 0.75."""
    (tmp_path / "brittle.py").write_text(
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, width):\n"
        "        super().__init__()\n"
        "        self.width, self.layer = width, nn.Linear(784, 10)\n"
        "    def forward(self, x):\n"
        "        if self.training and self.width > 0.75:\n"
        "            raise ValueError('too wide to train')\n"
        "        return self.layer(x.flatten(1))\n"
        "def net(*, width=1.0, depth=1, in_channels=1, num_classes=10, image_size=28):\n"
        "    return Net(width)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    grid = _tiny(families=["brittle:net"], sampler="grid", pruner="none", budget_flops=1e10,
                 search_space={"width": [0.5, 1.0], "depth": [1], "train_size": [300],
                               "epochs": [1], "lr": [3e-3]})
    storage = _storage(tmp_path)
    summary = run_search(parse_pipeline(grid), load_settings(), storage=storage, data=mnist)
    assert summary.n_trials == {"COMPLETE": 1, "FAIL": 1}
    failed = next(t for t in _trials(storage) if t.state == TrialState.FAIL)
    assert failed.user_attrs["fail_reason"] == (
        "family brittle:net: a training step failed at width=1.0, depth=1: ValueError: too "
        "wide to train")


def test_a_search_on_other_data_of_the_same_name_is_refused_before_its_parent_run(
    fresh_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two shapes.npz files of different content: the second's search writes no run."""
    from _byo import write_npz

    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
    first = write_npz(tmp_path / "one" / "shapes.npz")
    other = write_npz(tmp_path / "two" / "shapes.npz", train=400)
    grid = {"name": "shapes", "families": ["lenet5"], "sampler": "grid", "pruner": "none",
            "budget_flops": 1e10, "val_size": 80, "latency_seconds": 0.01,
            "search_space": {"width": [0.5], "depth": [1], "train_size": [200],
                             "epochs": [1], "lr": [3e-3]}}
    runs = MlflowClient(fresh_store).search_runs
    for source, study in ((first, "first"), (other, "second")):
        pipeline = tmp_path / f"{study}.yaml"
        pipeline.write_text(yaml.safe_dump(grid | {"dataset": f"npz:{source}"}))
        code, _, err = run_main(capsys, "search", str(pipeline), "--study", study,
                                "--storage", _storage(tmp_path))
        if study == "first":
            assert code == 0, err
            experiment = MlflowClient(fresh_store).get_experiment_by_name("mlscale-npz-shapes")
            assert experiment is not None
            before = len(runs([experiment.experiment_id]))
    assert code == 1
    assert err.startswith("Error: the experiment mlscale-npz-shapes holds runs of other data "
                          "named npz-shapes: "), err
    assert len(runs([experiment.experiment_id])) == before
    assert optuna.study.get_all_study_names(_storage(tmp_path)) == ["first"]
    # the same content elsewhere (another checkout, another machine) resumes the study
    (tmp_path / "three").mkdir()
    moved = tmp_path / "three" / "shapes.npz"
    moved.write_bytes(first.read_bytes())
    pipeline = tmp_path / "moved.yaml"
    pipeline.write_text(yaml.safe_dump(grid | {"dataset": f"npz:{moved}"}))
    code, _, err = run_main(capsys, "search", str(pipeline), "--study", "first",
                            "--storage", _storage(tmp_path))
    assert code == 0, err


def test_a_storage_that_fails_mid_search_is_one_line_naming_it(
    fresh_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a PostgreSQL server stopped mid-search gives Optuna's calls (it had been an
    'unexpected StorageInternalError ... please report this')."""
    from optuna.exceptions import StorageInternalError

    import mlscale.search._run

    def storage_gone(*args: object) -> None:
        raise StorageInternalError("An exception is raised during the commit.")

    monkeypatch.setattr(mlscale.search._run, "_optimize_one", storage_gone)
    code, _, err = run_main(capsys, "search", str(_write_pipeline(tmp_path)), "--storage",
                            _storage(tmp_path))
    assert code == 1
    assert err == (f"Error: Optuna storage {_storage(tmp_path)} failed: An exception is raised "
                   "during the commit.; run the same command again when it answers: finished "
                   "trials are kept\n")
