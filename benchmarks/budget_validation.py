"""Validation of `mlscale budget`: ask for 8x the largest registered run, train what it
recommends, and compare actual with predicted test loss (target: within 10%).

Every step is the real command in a fresh process: `mlscale search` fills a fresh store
with pipelines/lenet_scaling.yaml (unless --store names one that already has models),
`mlscale budget --flops 8xLARGEST --json` recommends, and `mlscale train` trains the
recommendation (not registered, so the registry the fits came from stays as it was).

    python benchmarks/budget_validation.py [--store DIR] [--factor 8] [--seeds 0,1]
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
from typing import Any

from _common import machine

ROOT = Path(__file__).resolve().parents[1]


def _mlscale(env: dict[str, str], *args: str) -> Any:
    completed = subprocess.run([sys.executable, "-m", "mlscale", *args, "--json"], env=env,
                               capture_output=True, text=True)
    if completed.returncode:
        raise SystemExit(f"mlscale {' '.join(args)} failed: {completed.stderr.strip()}")
    return json.loads(completed.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--store", default=None, help="Folder of the MLflow/Optuna stores.")
    parser.add_argument("--pipeline", default=str(ROOT / "pipelines" / "lenet_scaling.yaml"))
    parser.add_argument("--factor", type=float, default=8.0)
    parser.add_argument("--seeds", default="0", help="Comma-separated training seeds.")
    args = parser.parse_args()
    folder = Path(args.store or tempfile.mkdtemp(prefix="budget-validation-"))
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db",
           "MLSCALE_CACHE_DIR": str(folder / "cache")}
    print(f"machine: {machine()}")
    print(f"stores: {folder}")
    if not _mlscale(env, "models"):
        started = time.perf_counter()
        summary = _mlscale(env, "search", args.pipeline, "--storage",
                           f"sqlite:///{folder}/optuna.db")
        print(f"search {args.pipeline}: {summary['n_trials']} in "
              f"{time.perf_counter() - started:.0f} s")
    models = _mlscale(env, "models")
    largest = max(m["train_flops"] for m in models)
    budget = args.factor * largest
    answer = _mlscale(env, "budget", "--flops", f"{budget:.6g}", "--refresh")
    loss, accuracy = answer["predicted_test_loss"], answer["predicted_accuracy"]
    print(f"registry: {len(models)} models, largest run {largest:.3g} FLOPs; budget "
          f"{args.factor:g}x = {budget:.3g} FLOPs")
    print(f"recommended: {answer['family']} width {answer['dials']['width']:g} depth "
          f"{answer['dials']['depth']}, {answer['params']:,} params, "
          f"{answer['samples_seen']:,} samples ({answer['epochs']:.2f} epochs)")
    print(f"predicted: test loss {loss['value']:.4f} [{loss['lower']:.4f}, {loss['upper']:.4f}],"
          f" accuracy {accuracy['value']:.2%} [{accuracy['lower']:.2%}, {accuracy['upper']:.2%}]")
    for warning in answer["warnings"]:
        print(f"  warning: {warning}")
    errors = []
    for seed in (int(s) for s in args.seeds.split(",")):
        started = time.perf_counter()
        result = _mlscale(env, "train", "--arch", answer["family"], "--width",
                          str(answer["dials"]["width"]), "--depth", str(answer["dials"]["depth"]),
                          "--max-train-flops", f"{answer['train_flops']:.17g}", "--seed",
                          str(seed), "--no-register")
        error = result["test_loss"] / loss["value"] - 1
        errors.append(abs(error))
        inside = loss["lower"] <= result["test_loss"] <= loss["upper"]
        print(f"seed {seed}: actual test loss {result['test_loss']:.4f} ({error:+.1%} vs "
              f"predicted; {'inside' if inside else 'outside'} the 95% interval), accuracy "
              f"{result['test_accuracy']:.2%} (predicted {accuracy['value']:.2%}), "
              f"{result['train_flops']:.3g} FLOPs in {time.perf_counter() - started:.0f} s")
    worst = max(errors)
    print(f"largest |actual / predicted - 1| over {len(errors)} seed(s): {worst:.1%} "
          f"(target 10%: {'met' if worst <= 0.10 else 'NOT met'})")


if __name__ == "__main__":
    main()
