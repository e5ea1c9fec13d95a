"""Workers against real servers: PostgreSQL for Optuna, an MLflow tracking server.

The servers are the ones `mlscale servers up` starts. Where PostgreSQL cannot start, these
tests fail in CI (CI=true) and are skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest
import yaml
from _cli import run_main
from mlflow import MlflowClient
from optuna.trial import TrialState

from mlscale import servers as servers_module
from mlscale.cost_card import COST_CARD
from mlscale.search import (
    FAIL_REASON,
    PARENT_RUN,
    RUN_ID,
    SPENT,
    WORKER,
    committed_flops,
    stale_after_s,
)
from mlscale.servers import Servers

BUDGET = 9.0e9
PIPELINE: dict[str, Any] = {
    "name": "scale", "dataset": "mnist", "families": ["lenet5"],
    "search_space": {"width": {"low": 0.5, "high": 1.0}, "depth": 1,
                     "train_size": {"low": 300, "high": 600}, "epochs": 1,
                     "lr": {"low": 2e-3, "high": 6e-3, "log": True}},
    "budget_flops": BUDGET, "trial_flops_cap": 2.0e9, "sampler": "tpe", "pruner": "none",
    "seed": 0, "val_size": 300, "latency_seconds": 0.01, "evaluations": 1,
}


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    """PostgreSQL + mlflow server in a folder the `postgres` user can enter (under /tmp)."""
    folder = Path(tempfile.mkdtemp(prefix="mlscale-servers-"))
    folder.chmod(0o755)
    command = [sys.executable, "-m", "mlscale", "servers"]
    up = subprocess.run([*command, "up", "--dir", str(folder), "--json"], capture_output=True,
                        text=True, timeout=300)
    if up.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        if os.environ.get("CI") == "true":
            pytest.fail(f"the servers must start in CI: {up.stderr.strip()}")
        pytest.skip(f"cannot start the servers here: {up.stderr.strip()}")
    started = servers_module.status(folder)
    assert started is not None and started.postgres_pid and started.mlflow_pid
    yield started
    subprocess.run([*command, "down", "--dir", str(folder)], check=True, timeout=120)
    assert servers_module.status(folder) is not None, "down keeps the data"
    shutil.rmtree(folder, ignore_errors=True)


def _pipeline(tmp_path: Path, **overrides: Any) -> Path:
    path = tmp_path / "scale.yaml"
    path.write_text(yaml.safe_dump(PIPELINE | overrides))
    return path


def _worker(pipeline: Path, servers: Servers, study: str, *extra: str) -> subprocess.Popen[str]:
    env = os.environ | {"MLFLOW_TRACKING_URI": servers.tracking_uri,
                        "MLSCALE_STORAGE": servers.optuna_storage, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "mlscale", "search", str(pipeline),
                             "--study", study, "--heartbeat", "1", *extra], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _study(servers: Servers, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=servers.optuna_storage)


def _assert_ledger(servers: Servers, name: str, budget: float = BUDGET) -> None:
    """Budget kept, no duplicates, one parent, one run per trained trial, one version per
    COMPLETE trial with its cost card, every run closed."""
    study = _study(servers, name)
    trials = study.get_trials()
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    assert committed_flops(trials) <= budget
    trained = [t for t in trials if RUN_ID in t.user_attrs]
    params = [tuple(sorted(t.params.items())) for t in trials if t.state == TrialState.COMPLETE]
    assert len(params) == len(set(params)), "two trials trained the same parameters"
    client = MlflowClient(servers.tracking_uri, servers.tracking_uri)
    parent = study.user_attrs[PARENT_RUN]
    experiment = client.get_experiment_by_name("mlscale-mnist")
    assert experiment is not None
    parents = client.search_runs([experiment.experiment_id],
                                 f"tags.`mlscale.study` = '{name}' and run_name = 'search-{name}'")
    assert [r.info.run_id for r in parents] == [parent], "one parent run per study"
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent}'", max_results=1000)
    assert sorted(r.info.run_id for r in children) == sorted(t.user_attrs[RUN_ID]
                                                             for t in trained)
    assert all(r.info.status != "RUNNING" for r in [*children, *parents])
    versions = {v.run_id: v for v in client.search_model_versions("name = 'mnist-lenet5'")
                if v.run_id in {t.user_attrs[RUN_ID] for t in trained}}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete
    assert sorted(versions) == sorted(t.user_attrs[RUN_ID] for t in complete)
    for version in versions.values():
        assert set(COST_CARD) <= set(version.tags)
    mlflow.set_tracking_uri(servers.tracking_uri)
    mlflow.set_registry_uri(servers.tracking_uri)  # not one an earlier in-process test left
    with tempfile.TemporaryDirectory() as folder:
        version = next(iter(versions.values()))
        mlflow.artifacts.download_artifacts(f"models:/{version.name}/{version.version}",
                                            dst_path=folder)
        assert list(Path(folder).glob("*.onnx")), "the ONNX file comes back through the server"


@pytest.mark.slow
def test_servers_up_twice_is_harmless_and_status_says_what_runs(servers: Servers,
                                                                capsys: pytest.CaptureFixture
                                                                [str]) -> None:
    again = servers_module.up(Path(servers.folder))
    assert (again.postgres_pid, again.mlflow_pid) == (servers.postgres_pid, servers.mlflow_pid)
    code, out, _ = run_main(capsys, "servers", "status", "--dir", servers.folder, "--json")
    payload = json.loads(out)
    assert code == 0 and payload["postgres_running"] and payload["mlflow_running"]
    assert payload["tracking_uri"] == servers.tracking_uri


def test_unreachable_stores_are_one_line_errors_naming_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "search", str(_pipeline(tmp_path)), "--storage",
                            "postgresql://nobody:secret@127.0.0.1:1/x")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith("Error: cannot open Optuna storage postgresql://nobody:***@127.0.0.1:1/x")
    for args in (["models"], ["search", str(_pipeline(tmp_path)), "--storage",
                              f"sqlite:///{tmp_path / 'o.db'}"]):
        code, _, err = run_main(capsys, *args, "--tracking-uri", "http://127.0.0.1:1")
        assert code == 1 and len(err.strip().splitlines()) == 1
        assert err.startswith("Error: MLflow store http://127.0.0.1:1 failed: cannot connect "
                              "([Errno 111] Connection refused); is the server running?"), err


@pytest.mark.slow
def test_train_registers_through_the_server_with_its_onnx_and_cost_card(
        servers: Servers, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run_main(capsys, "train", "--arch", "lenet5", "--train-size", "300",
                              "--max-train-flops", "3e8", "--latency-seconds", "0.01",
                              "--tracking-uri", servers.tracking_uri, "--json")
    assert code == 0, err
    registered = json.loads(out)["registered"]
    client = MlflowClient(servers.tracking_uri, servers.tracking_uri)
    version = client.get_model_version(registered["name"], registered["version"])
    assert set(COST_CARD) <= set(version.tags)
    mlflow.set_tracking_uri(servers.tracking_uri)
    folder = mlflow.artifacts.download_artifacts(registered["model_uri"], dst_path=str(tmp_path))
    assert list(Path(folder).glob("*.onnx")), "the ONNX file comes back through the server"


@pytest.mark.slow
def test_three_workers_started_at_once_share_one_study(servers: Servers,
                                                       tmp_path: Path) -> None:
    pipeline = _pipeline(tmp_path)
    pair = _worker(pipeline, servers, "three", "--workers", "2", "--json")
    single = _worker(pipeline, servers, "three", "--json")
    out, err = pair.communicate(timeout=600)
    assert pair.returncode == 0, err[-3000:]
    payload = json.loads(out)
    assert payload["exit_code"] == 0 and len(payload["workers"]) == 2
    out, err = single.communicate(timeout=600)
    assert single.returncode == 0, err[-3000:]
    for summary in [*payload["workers"], json.loads(out)]:
        assert summary["flops_spent"] <= BUDGET
    _assert_ledger(servers, "three")
    study = _study(servers, "three")
    assert len({t.user_attrs[WORKER] for t in study.trials if RUN_ID in t.user_attrs}) >= 2


def _wait_for(predicate: Any, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


def _training_trial(servers: Servers, name: str, pid: int) -> optuna.trial.FrozenTrial | None:
    """The trial worker ``pid`` is training now (its run started, no epoch done yet)."""
    try:
        trials = _study(servers, name).get_trials()
    except KeyError:
        return None
    return next((t for t in trials if t.state == TrialState.RUNNING and RUN_ID in t.user_attrs
                 and SPENT not in t.user_attrs
                 and t.user_attrs.get(WORKER, "").endswith(f":{pid}")), None)


@pytest.mark.slow
def test_sigkill_one_worker_sigterm_another_and_a_restart_finishes(servers: Servers,
                                                                   tmp_path: Path) -> None:
    pipeline = _pipeline(tmp_path)
    killed, stopped = (_worker(pipeline, servers, "kill") for _ in range(2))
    _wait_for(lambda: _training_trial(servers, "kill", killed.pid))
    killed.send_signal(signal.SIGKILL)
    victim = _wait_for(lambda: _training_trial(servers, "kill", stopped.pid))
    stopped.send_signal(signal.SIGTERM)
    _, err = stopped.communicate(timeout=120)
    killed.communicate(timeout=30)
    assert stopped.returncode == 143
    assert err.strip().splitlines()[-1].startswith("Error: interrupted by SIGTERM")
    interrupted = _study(servers, "kill").trials[victim.number]
    assert interrupted.state == TrialState.FAIL
    assert interrupted.user_attrs[FAIL_REASON].startswith("interrupted")
    client = MlflowClient(servers.tracking_uri, servers.tracking_uri)
    assert client.get_run(victim.user_attrs[RUN_ID]).info.status == "KILLED"
    time.sleep(stale_after_s(1) + 0.5)  # past the killed worker's heartbeat grace period
    restarted = _worker(pipeline, servers, "kill")
    _, err = restarted.communicate(timeout=600)
    assert restarted.returncode == 0, err[-3000:]
    _assert_ledger(servers, "kill")


@pytest.mark.slow
def test_the_mlflow_server_going_away_fails_trials_cleanly_and_the_search_goes_on(
        servers: Servers, tmp_path: Path) -> None:
    pipeline = _pipeline(tmp_path, budget_flops=5e9)
    worker = _worker(pipeline, servers, "outage")
    _wait_for(lambda: _training_trial(servers, "outage", worker.pid))
    servers_module._stop_mlflow(servers)
    time.sleep(4)
    back = servers_module.up(Path(servers.folder))
    assert back.tracking_uri == servers.tracking_uri, "the server came back on its port"
    servers.mlflow_pid = back.mlflow_pid
    _, err = worker.communicate(timeout=600)
    assert worker.returncode == 0, err[-3000:]
    failed = [t for t in _study(servers, "outage").trials if t.state == TrialState.FAIL]
    assert failed, "a trial ran into the outage"
    for trial in failed:
        assert "MLflow store http://127.0.0.1" in trial.user_attrs[FAIL_REASON]
    _assert_ledger(servers, "outage", budget=5e9)


@pytest.mark.slow
def test_the_readers_work_unchanged_against_the_server(servers: Servers, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3 x 3 grid trained through the server, then `models`, `fit`, `budget`, both
    reports and `ui` read it back through the same URL."""
    grid = {"name": "readers", "dataset": "mnist", "families": ["lenet5"],
            "search_space": {"width": [0.5, 1.0, 2.0], "depth": [1],
                             "train_size": [300, 600, 1200], "epochs": [1], "lr": [4e-3]},
            "budget_flops": 1e11, "sampler": "grid", "pruner": "none", "seed": 0,
            "val_size": 300, "latency_seconds": 0.01, "evaluations": 1}
    path = tmp_path / "readers.yaml"
    path.write_text(yaml.safe_dump(grid))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", servers.tracking_uri)
    code, _, err = run_main(capsys, "search", str(path), "--storage", servers.optuna_storage)
    assert code == 0, err
    code, out, err = run_main(capsys, "models", "--json")
    assert code == 0, err
    assert len([row for row in json.loads(out) if row["arch"] == "lenet5"]) >= 9
    code, out, err = run_main(capsys, "fit", "--experiment", "mlscale-mnist", "--arch",
                              "lenet5", "--law", "nd", "--json")
    assert code == 0, err
    assert json.loads(out)["nobs"] >= 9
    code, out, err = run_main(capsys, "budget", "--flops", "1e11", "--families", "lenet5",
                              "--json", "--refresh")
    assert code == 0, err
    assert json.loads(out)["family"] == "lenet5"
    for report in ("latency", "scaling"):
        code, _, err = run_main(capsys, "report", report, "--out", str(tmp_path / report))
        assert code == 0, err
        assert (tmp_path / report / f"{report}_report.html").is_file()
    code, _, err = run_main(capsys, "ui")
    assert code == 0
    assert err.strip() == (f"The MLflow server {servers.tracking_uri} serves the UI itself: "
                           f"open {servers.tracking_uri}/#/models")


# What `up`, `status` and `down` do with stale records, orphans and unusable folders.

SLEEP = [sys.executable, "-c", "import time; time.sleep(120)"]


def _sleeper(*args: str) -> subprocess.Popen[bytes]:
    """An unrelated live process (its own process group), to own a reused PID."""
    return subprocess.Popen([*SLEEP, *args], start_new_session=True)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _write_lock(folder: Path, pid: int, data: Path | None = None) -> None:
    """A postmaster.pid as PostgreSQL writes it, naming ``pid``."""
    data = data or folder / "postgres" / "data"
    (folder / "postgres" / "data").mkdir(parents=True, exist_ok=True)
    (folder / "postgres" / "data" / "postmaster.pid").write_text(
        f"{pid}\n{data}\n1700000000\n5432\n\n127.0.0.1\n  5432001    999999\nready   \n")


def _servers_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlscale", "servers", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_reused_pids_in_stale_records_are_never_signalled(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A postmaster.pid naming a live unrelated process, and an MLflow PID now owned by
    another checkout's mlflow server (same port, other folder): status says stopped, down
    signals neither."""
    folder = tmp_path.resolve()
    unrelated = _sleeper()
    port = 45678
    other_mlflow = _sleeper("mlflow", "server", "--artifacts-destination",
                            "/elsewhere/mlflow/artifacts", "--port", str(port))
    try:
        servers_module._save(Servers(str(folder), 45677, None, port, other_mlflow.pid, "pw"))
        _write_lock(folder, unrelated.pid)
        code, out, _ = run_main(capsys, "servers", "status", "--dir", str(folder), "--json")
        payload = json.loads(out)
        assert code == 0 and payload["state"] == "stopped"
        assert not payload["postgres_running"] and not payload["mlflow_running"]
        assert payload["stale_lock_pid"] == unrelated.pid
        code, out, _ = run_main(capsys, "servers", "status", "--dir", str(folder))
        assert out.splitlines()[:2] == [
            f"PostgreSQL: stopped (its lock file names pid {unrelated.pid}, another program: "
            "`up` clears it)", "MLflow server: stopped"]
        code, out, _ = run_main(capsys, "servers", "down", "--dir", str(folder))
        assert (code, out.strip()) == (0, f"nothing was running in {folder}")
        time.sleep(0.5)
        assert unrelated.poll() is None and other_mlflow.poll() is None
    finally:
        for process in (unrelated, other_mlflow):
            process.kill()
            process.wait()


def test_unusable_folders_and_empty_ones_get_one_line_answers_naming_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_main(capsys, "servers", "up", "--dir", str(blocker / "servers"))
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"Error: cannot use {blocker / 'servers'} for the servers: ")
    code, _, err = run_main(capsys, "servers", "up", "--dir", str(blocker))
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(blocker) in err
    empty = tmp_path / "empty"
    code, out, _ = run_main(capsys, "servers", "status", "--dir", str(empty), "--json")
    assert code == 0 and json.loads(out) == {"folder": str(empty), "state": "not set up",
                                             "postgres_running": False,
                                             "mlflow_running": False}
    code, out, _ = run_main(capsys, "servers", "status", "--dir", str(empty))
    assert (code, out.strip()) == (0, f"no servers set up in {empty} (mlscale servers up)")
    code, out, _ = run_main(capsys, "servers", "down", "--dir", str(empty))
    assert (code, out.strip()) == (0, f"no servers set up in {empty}")


def test_workers_get_the_storage_url_through_the_environment(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """`search --workers 2 --storage URL`: no child shows the password in its arguments."""
    from mlscale._local_workers import run_workers

    url = "postgresql://nobody:not-in-argv@127.0.0.1:1/x"
    seen: dict[int, tuple[str, str]] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit() or entry.name in map(str, seen):
                    continue
                try:
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    if int(stat[1]) == os.getpid():
                        seen[int(entry.name)] = (_cmdline(int(entry.name)),
                                                 (entry / "environ").read_bytes().decode())
                except (OSError, IndexError, ValueError):
                    continue
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        code, _ = run_workers(2, [str(_pipeline(tmp_path)), "--storage", url, "--no-summary"],
                              capture=True)
    finally:
        done.set()
        watcher.join()
    workers = {pid: seen_ for pid, seen_ in seen.items() if "mlscale search" in seen_[0]}
    assert code == 1 and len(workers) == 2
    for cmdline, environ in workers.values():
        assert "not-in-argv" not in cmdline
        assert f"MLSCALE_STORAGE={url}\0" in environ
    assert capfd.readouterr().err.count(
        "Error: cannot open Optuna storage postgresql://nobody:***@127.0.0.1:1/x") == 2


@pytest.mark.slow
def test_real_servers_survive_stale_locks_copies_orphans_and_failed_starts() -> None:
    """With a real PostgreSQL and mlflow server: a failed MLflow start stops the PostgreSQL
    it started; no password in any argument list; a killed `mlflow server` leaves uvicorn
    that status reports and up replaces on the same URL; a stale lock file naming a live
    process is cleared by up and that process survives; a copied folder stops nothing."""
    folder = Path(tempfile.mkdtemp(prefix="mlscale-servers-")).resolve()
    folder.chmod(0o755)
    copy = Path(tempfile.mkdtemp(prefix="mlscale-copy-")).resolve()
    unrelated = _sleeper()
    try:
        (folder / "mlflow").write_text("")  # the MLflow server's folder cannot be made
        failed = _servers_cli("up", "--dir", str(folder))
        if any(cause in failed.stderr for cause in ("initdb failed", "PostgreSQL (log:",
                                                    "PostgreSQL is not installed")) \
                and os.environ.get("CI") != "true":
            pytest.skip(f"cannot start PostgreSQL here: {failed.stderr.strip()}")
        assert failed.returncode == 1 and len(failed.stderr.strip().splitlines()) == 1
        assert failed.stderr.startswith(f"Error: cannot use {folder} for the servers: ")
        assert failed.stderr.strip().endswith("; stopped PostgreSQL again")
        assert not json.loads(_servers_cli("status", "--dir", str(folder), "--json").stdout
                              )["postgres_running"]
        (folder / "mlflow").unlink()

        started = _servers_cli("up", "--dir", str(folder), "--json")
        assert started.returncode == 0, started.stderr
        first = json.loads(started.stdout)
        assert first["state"] == "running" and len(first["mlflow_pids"]) >= 3
        for pid in [first["postgres_pid"], *first["mlflow_pids"]]:
            assert _cmdline(pid) and first["password"] not in _cmdline(pid)

        # a copy of the records (cp -r) names the original's PIDs: it stops nothing
        (copy / "postgres" / "data").mkdir(parents=True)
        shutil.copy(folder / "servers.json", copy / "servers.json")
        shutil.copy(folder / "postgres" / "data" / "postmaster.pid",
                    copy / "postgres" / "data" / "postmaster.pid")
        assert json.loads(_servers_cli("status", "--dir", str(copy), "--json").stdout
                          )["state"] == "stopped"
        down = _servers_cli("down", "--dir", str(copy))
        assert down.stdout.strip() == f"nothing was running in {copy}"
        assert json.loads(_servers_cli("status", "--dir", str(folder), "--json").stdout
                          )["state"] == "running"

        # SIGKILL of the `mlflow server` process: its uvicorn still serves the old port
        os.kill(first["mlflow_pid"], signal.SIGKILL)
        time.sleep(1)
        orphaned = json.loads(_servers_cli("status", "--dir", str(folder), "--json").stdout)
        assert orphaned["mlflow_running"] and first["mlflow_pid"] not in orphaned["mlflow_pids"]
        text = _servers_cli("status", "--dir", str(folder)).stdout
        assert f"its `mlflow server` process {first['mlflow_pid']} is gone" in text
        again = _servers_cli("up", "--dir", str(folder), "--json")
        assert again.returncode == 0, again.stderr
        second = json.loads(again.stdout)
        assert second["tracking_uri"] == first["tracking_uri"], again.stderr
        assert not set(orphaned["mlflow_pids"]) & set(second["mlflow_pids"])
        assert not [pid for pid in orphaned["mlflow_pids"] if _cmdline(pid)]

        down = _servers_cli("down", "--dir", str(folder))
        assert down.stdout.strip() == (f"stopped the MLflow server and PostgreSQL (data kept "
                                       f"in {folder})")
        assert not [pid for pid in [second["postgres_pid"], *second["mlflow_pids"]]
                    if _cmdline(pid)]

        # a stale lock file naming a live unrelated process (a PID reused after a reboot)
        _write_lock(folder, unrelated.pid)
        down = _servers_cli("down", "--dir", str(folder))
        assert down.stdout.strip() == f"nothing was running in {folder}"
        again = _servers_cli("up", "--dir", str(folder), "--json")
        assert again.returncode == 0, again.stderr
        assert again.stderr.splitlines()[0] == (
            f"removed a stale PostgreSQL lock file: {folder}/postgres/data/postmaster.pid "
            f"named pid {unrelated.pid}, which is not this folder's PostgreSQL")
        assert json.loads(again.stdout)["state"] == "running"
        assert unrelated.poll() is None
    finally:
        _servers_cli("down", "--dir", str(folder), timeout=120)
        unrelated.kill()
        unrelated.wait()
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(copy, ignore_errors=True)
