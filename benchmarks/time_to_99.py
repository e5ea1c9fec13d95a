"""Time to 99.0% MNIST test accuracy for a model of at most 61,706 parameters.

Recipe: lenet5 at width 1 (61,706 parameters), mlscale's default trainer (AdamW,
one-cycle LR peaking at lenet5's default 1e-2, batch 256, weight decay 5e-4, bf16
autocast where native),
6 epochs over the 55,000-sample train split. Each seed runs the real CLI,
`mlscale train --arch lenet5 --epochs 6 --json`, in a fresh process; the time is the
whole command as a user sees it (start-up, data loading, training, every evaluation).

    python benchmarks/time_to_99.py --seeds 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _common import machine, mean_std

EPOCHS = 6


def run_seed(seed: int) -> tuple[float, float, float]:
    """(command seconds, trainer wall seconds, test accuracy) for one seed."""
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "mlscale", "train", "--arch", "lenet5", "--epochs", str(EPOCHS),
         "--seed", str(seed), "--json"],
        capture_output=True, text=True, check=True,
    )
    elapsed = time.perf_counter() - started
    result = json.loads(completed.stdout)
    assert result["params"] <= 61_706
    return elapsed, result["wall_time_s"], result["test_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    commands, trainers, accuracies = [], [], []
    for seed in range(args.seeds):
        command_s, trainer_s, accuracy = run_seed(seed)
        commands.append(command_s)
        trainers.append(trainer_s)
        accuracies.append(accuracy)
        print(f"seed {seed}: {command_s:.1f} s command, {trainer_s:.1f} s in train(), "
              f"test accuracy {accuracy:.2%}", flush=True)
    print(f"machine: {machine()}")
    print(f"command s:     {mean_std(commands)}")
    print(f"train() s:     {mean_std(trainers)}")
    print(f"test accuracy: {mean_std(accuracies)} (min {min(accuracies):.4f})")
    print(f"all seeds >= 99.0%: {min(accuracies) >= 0.99}; all under 20 s: {max(commands) <= 20}")


if __name__ == "__main__":
    main()
