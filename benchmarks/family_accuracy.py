"""Every family at its default dials reaches 99.0% MNIST test accuracy in 4 epochs.

Each row runs the real CLI in a fresh process with the trainer's defaults (the family's
own learning rate, weight decay and warm-up from its spec), on the whole 55,000-sample
train split, into a throw-away MLflow store:

    mlscale train --arch FAMILY --epochs 4 --seed S --no-register --json \
        --tracking-uri sqlite:////tmp/.../family_accuracy.db

    python benchmarks/family_accuracy.py                      # every family, seed 0
    python benchmarks/family_accuracy.py --seeds 0 1 --families lenet5 resnet_mini
    python benchmarks/family_accuracy.py --precision fp32    # as on a CPU without bf16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from mlscale.models import list_models

from _common import machine

EPOCHS = 4
TARGET = 0.99


def command(family: str, seed: int, precision: str, store: Path) -> list[str]:
    """The exact ``mlscale train`` command of one row."""
    return ["mlscale", "train", "--arch", family, "--epochs", str(EPOCHS), "--seed", str(seed),
            "--precision", precision, "--no-register", "--json",
            "--tracking-uri", f"sqlite:///{store}"]


def run_row(family: str, seed: int, precision: str, store: Path) -> dict[str, object]:
    """Train one family once and keep what the table shows."""
    argv = command(family, seed, precision, store)
    completed = subprocess.run([sys.executable, "-m", "mlscale", *argv[1:]],
                               capture_output=True, text=True, check=True)
    result = json.loads(completed.stdout)
    config = result["config"]
    return {"family": family, "seed": seed, "params": result["params"],
            "width": result["width"], "depth": result["depth"], "lr": config["lr"],
            "weight_decay": config["weight_decay"], "precision": result["precision"],
            "test_accuracy": result["test_accuracy"],
            "test_loss": result["test_loss"], "train_time_s": result["train_time_s"],
            "command": " ".join(argv[:-2])}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--families", nargs="+", default=None, help="default: the whole zoo")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="mlscale train's --precision (auto: bf16 where the CPU runs it)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/family_accuracy.json"))
    args = parser.parse_args()
    families = args.families or list_models()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        store = Path(scratch) / "family_accuracy.db"
        print("| family | params | lr | weight decay | precision | seed | test accuracy "
              "| train s |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
        for family in families:
            for seed in args.seeds:
                row = run_row(family, seed, args.precision, store)
                rows.append(row)
                print(f"| {family} | {row['params']:,} | {row['lr']:g} | {row['weight_decay']:g} "
                      f"| {row['precision']} | {seed} | {row['test_accuracy']:.2%} "
                      f"| {row['train_time_s']:.0f} |", flush=True)
    print(f"machine: {machine()}")
    print(f"every row >= {TARGET:.1%}: {all(r['test_accuracy'] >= TARGET for r in rows)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
