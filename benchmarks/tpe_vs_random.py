"""TPE against random search at an equal FLOPs budget: best validation loss, 3 seeds.

Both samplers search the same space (lenet5 and resnet_mini widths, train size, LR,
per-trial FLOPs) under the same total budget of training FLOPs, with the same pruner,
each search in a fresh process with its own Optuna study and MLflow store.

    python benchmarks/tpe_vs_random.py --seeds 3 --budget-flops 1.5e13
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from _common import machine, mean_std

SPACE = {
    "name": "tpe_vs_random", "dataset": "mnist",
    "families": {"lenet5": {"width": {"low": 0.5, "high": 4.0, "log": True}},
                 "resnet_mini": {"width": {"low": 0.25, "high": 0.75, "log": True}}},
    "search_space": {"depth": 1, "train_size": {"low": 2000, "high": 55000, "log": True},
                     "train_flops": {"low": 2e11, "high": 1.5e12, "log": True},
                     "lr": {"low": 5e-4, "high": 2e-2, "log": True}},
    "trial_flops_cap": 1.5e12, "pruner": "median", "latency_seconds": 0.02,
}


def best_val_loss(sampler: str, seed: int, budget: float) -> tuple[float, int]:
    from mlscale.data import load
    from mlscale.pipeline import parse_pipeline
    from mlscale.registry import load_settings
    from mlscale.search import run_search

    with tempfile.TemporaryDirectory() as folder:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
        pipeline = parse_pipeline({**SPACE, "sampler": sampler, "seed": seed,
                                   "budget_flops": budget})
        summary = run_search(pipeline, load_settings(), storage=f"sqlite:///{folder}/o.db",
                             data=load("mnist"))
    assert summary.best is not None and summary.best.metrics.val_loss is not None
    return summary.best.metrics.val_loss, summary.n_trials.get("COMPLETE", 0)


def _in_fresh_process(sampler: str, seed: int, budget: float) -> tuple[float, int]:
    completed = subprocess.run(
        [sys.executable, __file__, "--one", sampler, "--seed", str(seed), "--budget-flops",
         str(budget)], capture_output=True, text=True, check=True)
    loss, complete = completed.stdout.split()[-2:]
    return float(loss), int(complete)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget-flops", type=float, default=1.5e13)
    parser.add_argument("--one", choices=["tpe", "random"], help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        loss, complete = best_val_loss(args.one, args.seed, args.budget_flops)
        print(loss, complete)
        return
    results: dict[str, list[float]] = {"tpe": [], "random": []}
    for seed in range(args.seeds):
        for sampler in results:
            loss, complete = _in_fresh_process(sampler, seed, args.budget_flops)
            results[sampler].append(loss)
            print(f"seed {seed} {sampler}: best val loss {loss:.4f} ({complete} complete "
                  f"trials)", flush=True)
    print(f"machine: {machine()}; budget {args.budget_flops:.3g} FLOPs per search")
    for sampler, losses in results.items():
        print(f"{sampler}: best val loss {mean_std(losses)}")
    ratios = [t / r for t, r in zip(results["tpe"], results["random"], strict=True)]
    print(f"TPE / random best val loss: {mean_std(ratios)}")


if __name__ == "__main__":
    main()
