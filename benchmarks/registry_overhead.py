"""Per-model overhead of export + check + latency + logging + registration.

For lenet5 and the largest default model (by parameters), trains a small model (the
training is not what is measured), then times the stages `mlscale train` runs after
training, at the default latency settings (batch sizes 1, 32, 256; 0.25 s each; torch
eager at batch 1), into a fresh SQLite MLflow store. Several seeds; the overhead is
printed beside the training time of one full epoch of the same model for scale.

    python benchmarks/registry_overhead.py --seeds 3
"""

from __future__ import annotations

import argparse
import os
import tempfile

from _common import machine, mean_std

STAGES = ("export", "latency", "log", "register")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as store:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
        from mlscale.measure import count_params
        from mlscale.models import get_model, list_models
        from mlscale.registry import load_settings
        from mlscale.train import TrainConfig
        from mlscale.workflow import train_and_register

        largest = max(list_models(), key=lambda name: count_params(get_model(name)))
        print(f"machine: {machine()}")
        for arch in ("lenet5", largest):
            totals, per_stage = [], {stage: [] for stage in STAGES}
            epoch_seconds = []
            for seed in range(args.seeds):
                config = TrainConfig(arch=arch, train_size=2_000, epochs=1, seed=seed)
                outcome = train_and_register(config, load_settings())
                for stage in STAGES:
                    per_stage[stage].append(outcome.seconds[stage])
                totals.append(sum(outcome.seconds[stage] for stage in STAGES))
                epoch_seconds.append(outcome.result.train_time_s * 55_000 / 2_000)
                print(f"{arch} seed {seed}: overhead {totals[-1]:.2f} s ("
                      + ", ".join(f"{s} {outcome.seconds[s]:.2f}" for s in STAGES) + ")",
                      flush=True)
            print(f"{arch}: overhead s {mean_std(totals)}; "
                  + ", ".join(f"{s} {mean_std(v)}" for s, v in per_stage.items())
                  + f"; one 55k-sample epoch of training s {mean_std(epoch_seconds)}; "
                  f"overhead / epoch {sum(totals) / sum(epoch_seconds):.2f}")


if __name__ == "__main__":
    main()
