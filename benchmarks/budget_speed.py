"""Time to a `mlscale budget` answer on a registry of 1,000 model versions (target: 3 s).

The registry is generated for the benchmark: 1,000 versions over three families, each
with a full cost card whose test loss and error rate follow a joint scaling law with
noise and whose latency grows with FLOPs, registered through MLflow's client into a
fresh SQLite store. Each answer is the real command, `mlscale budget --flops 1e15
--json`, in a fresh process (imports included). Baseline in the same run: the same
command with --refresh, which refits every family instead of reading the cache.

    python benchmarks/budget_speed.py [--versions 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import machine, mean_std

FAMILIES = {  # family: (grid of params, forward FLOPs per param, train FLOPs per param)
    "lenet5": (np.geomspace(5e3, 1e6, 12), 13.5, 36.7),
    "vgg_mini": (np.geomspace(6e3, 2e6, 12), 160.0, 470.0),
    "resnet_mini": (np.geomspace(5e3, 3e6, 12), 90.0, 270.0),
}


def populate(uri: str, versions: int, seed: int = 0) -> None:
    """Register ``versions`` synthetic versions spread evenly over FAMILIES."""
    from mlflow import MlflowClient

    client = MlflowClient(uri, uri)
    rng = np.random.default_rng(seed)
    for i in range(versions):
        family = list(FAMILIES)[i % len(FAMILIES)]
        sizes, fwd_per_param, train_per_param = FAMILIES[family]
        params = float(rng.choice(sizes))
        train_size = float(rng.choice([1000, 3000, 10000, 30000, 55000]))
        seen = train_size * float(rng.choice([1, 2, 4, 8]))
        effective = train_size * (1 + 15.4 * -np.expm1(-(seen / train_size - 1) / 15.4))
        noise = float(np.exp(rng.normal(0, 0.03)))
        loss = (0.02 + 40 * params**-0.6 + 60 * effective**-0.55) * noise
        error = (0.006 + 12 * params**-0.6 + 20 * effective**-0.55) * noise
        flops = params * fwd_per_param
        p90 = 0.01 + 2e-9 * flops * float(np.exp(rng.normal(0, 0.1)))
        tags = {"dataset": "mnist", "arch": family, "run_name": f"{family}-synthetic-{i}",
                "width": "1", "depth": "1", "params": f"{params:.0f}",
                "flops_per_sample": f"{flops:.0f}",
                "train_flops_per_sample": f"{params * train_per_param:.0f}",
                "train_flops": f"{params * train_per_param * seen:.6g}",
                "samples_seen": f"{seen:.0f}", "train_size": f"{train_size:.0f}",
                "test_loss": f"{loss:.6g}", "error_rate": f"{error:.6g}",
                "test_accuracy": f"{1 - error:.6g}", "latency_p50_ms": f"{p90 * 0.8:.6g}",
                "latency_p90_ms": f"{p90:.6g}", "latency_p99_ms": f"{p90 * 1.3:.6g}",
                "throughput": f"{1e3 / p90:.6g}", "latency_threads": "2"}
        name = f"mnist-{family}"
        if i < len(FAMILIES):
            client.create_registered_model(name)
        client.create_model_version(name, f"file:///synthetic/{i}", tags=tags)


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--versions", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        uri = f"sqlite:///{Path(folder) / 'mlflow.db'}"
        started = time.perf_counter()
        populate(uri, args.versions)
        print(f"machine: {machine()}")
        print(f"registered {args.versions} synthetic versions in "
              f"{time.perf_counter() - started:.0f} s")
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
               "MLSCALE_CACHE_DIR": str(Path(folder) / "cache")}
        command = [sys.executable, "-m", "mlscale", "budget", "--flops", "1e15", "--json"]
        first = timed(command, env)  # fits and measures the families' dial grids once
        refits = [timed([*command, "--refresh"], env) for _ in range(args.repeats)]
        cached = [timed(command, env) for _ in range(args.repeats)]
    print(f"first answer (fits + dial grids measured): {first:.2f} s")
    print(f"refit answer (--refresh), {args.repeats} runs: {mean_std(refits)} s")
    print(f"cached answer, {args.repeats} runs: {mean_std(cached)} s "
          f"(target 3 s: {'met' if max(cached) <= 3 else 'NOT met'}; worst {max(cached):.2f} s)")
    print(f"refit / cached: {np.mean(refits) / np.mean(cached):.2f}x")


if __name__ == "__main__":
    main()
