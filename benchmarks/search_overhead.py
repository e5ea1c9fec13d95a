"""Share of a search's wall time not spent training, on pipelines/quickstart.yaml.

Runs the real command (`mlscale search PIPELINE --json`) in a fresh process against
fresh Optuna and MLflow stores, then compares its wall time with the time its trials
spent in training steps (TrainResult.train_time_s, summed over trials). Everything else
is overhead: start-up, data loading, proposing and pricing trials, the validations for
the pruner, test evaluation, ONNX export and checks, latency timing, MLflow logging and
registration, plots.

    python benchmarks/search_overhead.py [--pipeline pipelines/quickstart.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pipeline", default=str(ROOT / "pipelines" / "quickstart.yaml"))
    parser.add_argument("--budget-flops", type=float, default=None)
    args = parser.parse_args()
    import optuna

    with tempfile.TemporaryDirectory() as folder:
        storage = f"sqlite:///{folder}/optuna.db"
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"}
        command = [sys.executable, "-m", "mlscale", "search", args.pipeline, "--storage",
                   storage, "--json"]
        if args.budget_flops:
            command += ["--budget-flops", str(args.budget_flops)]
        started = time.perf_counter()
        completed = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - started
        summary = json.loads(completed.stdout)
        trials = optuna.load_study(study_name=summary["study"], storage=storage).get_trials()
    steps = sum(t.user_attrs.get("train_seconds", 0.0) for t in trials)
    print(f"machine: {machine()}")
    print(f"pipeline {args.pipeline}: {summary['n_trials']}, "
          f"{summary['flops_spent']:.3g} of {summary['budget_flops']:.3g} FLOPs")
    print(f"search wall time {wall:.1f} s; training steps (every trial, pruned ones up to "
          f"their last validation) {steps:.1f} s")
    print(f"share not spent in training steps: {(wall - steps) / wall:.1%}")


if __name__ == "__main__":
    main()
