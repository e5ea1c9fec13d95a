"""Scale-out: trials/min and FLOPs/s for 1 and 2 workers, SQLite against PostgreSQL + server.

Starts the servers `mlscale servers up` starts (in a temporary folder), then runs the
same tiny LeNet-5 search (`mlscale search --workers W`, a fresh study each time) on
(a) SQLite files for Optuna and MLflow and (b) PostgreSQL for Optuna with an MLflow
tracking server on PostgreSQL. Separately it times what registration costs per trial
(`train_and_register`'s log + register stages) through HTTP against a local SQLite store,
the database transactions one search trial costs (PostgreSQL's own commit counter) and how
many transactions per second the storage sustains from one process (empty Optuna trials).
The cluster figures printed last are arithmetic on these numbers, not a measurement.

    python benchmarks/scale_out.py --repeats 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from _common import machine, mean_std

PIPELINE = {
    "name": "bench", "dataset": "mnist", "families": ["lenet5"],
    "search_space": {"width": {"low": 0.5, "high": 1.0}, "depth": 1,
                     "train_size": {"low": 1000, "high": 2000}, "epochs": 1,
                     "lr": {"low": 2e-3, "high": 6e-3, "log": True}},
    "budget_flops": 2.5e10, "trial_flops_cap": 6.0e9, "sampler": "random", "pruner": "none",
    "seed": 0, "val_size": 500, "latency_seconds": 0.05, "evaluations": 1,
}


def _search(pipeline: Path, workers: int, storage: str, tracking: str, study: str
            ) -> tuple[float, int, float]:
    """Wall seconds, COMPLETE trials and their training FLOPs for one search."""
    import optuna

    env = os.environ | {"MLFLOW_TRACKING_URI": tracking}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mlscale", "search", str(pipeline), "--storage",
                    storage, "--study", study, "--workers", str(workers)], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    trials = optuna.load_study(study_name=study, storage=storage).get_trials(
        states=(optuna.trial.TrialState.COMPLETE,))
    return seconds, len(trials), sum(t.user_attrs["train_flops"] for t in trials)


def _registration_seconds(tracking: str, seeds: int) -> list[float]:
    """log + register seconds of a small LeNet-5 through ``tracking``."""
    from mlscale.registry import load_settings
    from mlscale.train import TrainConfig
    from mlscale.workflow import train_and_register

    values = []
    for seed in range(seeds):
        outcome = train_and_register(TrainConfig(arch="lenet5", train_size=500, epochs=1,
                                                 seed=seed), load_settings(tracking),
                                     latency_seconds=0.01)
        values.append(outcome.seconds["log"] + outcome.seconds["register"])
    return values


def _commits(servers: Any) -> int:
    """Transactions committed so far in the Optuna database (pg_stat_database)."""
    import psycopg

    with psycopg.connect(servers.optuna_storage, autocommit=True) as connection:
        connection.execute("SELECT pg_stat_clear_snapshot()")
        row = connection.execute("SELECT xact_commit FROM pg_stat_database "
                                 "WHERE datname = 'optuna'").fetchone()
    assert row is not None
    return int(row[0])


def _transactions_per_second(servers: Any, seconds: float = 5.0) -> float:
    """Commits/s the storage sustains for empty Optuna trials (ask + tell), one process."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=servers.optuna_storage,
                                study_name=f"empty-{time.time_ns()}")
    before, start = _commits(servers), time.perf_counter()
    while time.perf_counter() - start < seconds:
        trial = study.ask()
        study.tell(trial, trial.suggest_float("x", 0, 1))
    elapsed = time.perf_counter() - start
    time.sleep(1.0)  # the statistics collector reports with a delay
    return (_commits(servers) - before) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3, help="registration timings")
    args = parser.parse_args()
    from mlscale import servers as servers_module

    folder = Path(tempfile.mkdtemp(prefix="mlscale-bench-"))
    folder.chmod(0o755)
    try:
        servers = servers_module.up(folder)
        pipeline = folder / "bench.yaml"
        pipeline.write_text(yaml.safe_dump(PIPELINE))
        local = f"sqlite:///{folder / 'local-mlflow.db'}"
        setups = {"SQLite": (f"sqlite:///{folder / 'optuna.db'}", local),
                  "PostgreSQL + server": (servers.optuna_storage, servers.tracking_uri)}
        print(f"machine: {machine()}")
        per_worker: dict[str, float] = {}
        commits_per_trial: list[float] = []
        for name, (storage, tracking) in setups.items():
            for workers in (1, 2):
                rates, flops = [], []
                for repeat in range(args.repeats):
                    before = _commits(servers)
                    seconds, complete, spent = _search(pipeline, workers, storage, tracking,
                                                       f"s{workers}-{repeat}")
                    if storage == servers.optuna_storage:
                        time.sleep(1.0)
                        commits_per_trial.append((_commits(servers) - before) / complete)
                    rates.append(complete / seconds * 60)
                    flops.append(spent / seconds)
                    print(f"{name}, {workers} worker(s): {complete} trials in {seconds:.1f} s",
                          flush=True)
                per_worker[f"{name}/{workers}"] = sum(rates) / len(rates)
                print(f"{name}, {workers} worker(s): trials/min {mean_std(rates)}, "
                      f"training FLOP/s {mean_std([f / 1e9 for f in flops])} G", flush=True)
        http = _registration_seconds(servers.tracking_uri, args.seeds)
        sqlite = _registration_seconds(local, args.seeds)
        print(f"log + register per trial: HTTP server {mean_std(http)} s, "
              f"local SQLite {mean_std(sqlite)} s", flush=True)
        rate = _transactions_per_second(servers)
        per_trial = sum(commits_per_trial) / len(commits_per_trial)
        print(f"PostgreSQL: {per_trial:.0f} commits per search trial (COMPLETE trials' share "
              f"of all), {rate:.0f} commits/s sustained from one process")
        one = per_worker["PostgreSQL + server/1"]
        print(f"arithmetic, not measured: M machines like this one (1 worker each, "
              f"{one:.1f} trials/min) need M x {one * per_trial / 60:.1f} commits/s, under "
              f"the {rate:.0f} commits/s one client drove while M < "
              f"{rate * 60 / (one * per_trial):,.0f}; HTTP registration adds "
              f"{(sum(http) / len(http)) - (sum(sqlite) / len(sqlite)):+.2f} s per trial "
              "against local SQLite")
    finally:
        servers_module.down(folder)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
