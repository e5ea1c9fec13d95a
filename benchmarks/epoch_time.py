"""LeNet-5 epoch time: mlscale's trainer against a torchvision + DataLoader reference.

The reference is the textbook pipeline: torchvision.datasets.MNIST with per-sample
ToTensor + Normalize, a DataLoader with batch 128, the same model (lenet5) and the
same optimizer (AdamW), over the same 55,000 training samples. Each measurement runs
in a fresh process (so neither side inherits the other's allocator or thread state),
sides alternating, and times the training steps of one epoch only. The speed-up is
reference / mlscale, per seed.

    python benchmarks/epoch_time.py --seeds 3
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from _common import machine, mean_std


def reference_epoch_seconds(seed: int) -> float:
    import torch
    import torch.nn.functional as F
    import torchvision
    from torch.utils.data import DataLoader, Subset
    from torchvision import transforms

    from mlscale.data import DATASETS, prepare, split_validation
    from mlscale.models import get_model

    info = DATASETS["mnist"]
    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((info.mean,), (info.std,))]
    )
    dataset = torchvision.datasets.MNIST(prepare("mnist").root, train=True, transform=transform)
    train_idx, _ = split_validation(dataset.targets, 5000, seed)
    loader = DataLoader(Subset(dataset, train_idx.tolist()), batch_size=128, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    model = get_model("lenet5")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    model.train()
    started = time.perf_counter()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def mlscale_epoch_seconds(seed: int) -> float:
    from mlscale.train import TrainConfig, train

    return train(TrainConfig(arch="lenet5", epochs=1, seed=seed)).train_time_s


def _in_fresh_process(side: str, seed: int) -> float:
    completed = subprocess.run(
        [sys.executable, __file__, "--side", side, "--seed", str(seed)],
        capture_output=True, text=True, check=True,
    )
    return float(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--side", choices=["reference", "mlscale"], help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        measure = reference_epoch_seconds if args.side == "reference" else mlscale_epoch_seconds
        print(measure(args.seed))
        return
    ours, reference, ratios = [], [], []
    for seed in range(args.seeds):
        r = _in_fresh_process("reference", seed)
        o = _in_fresh_process("mlscale", seed)
        reference.append(r)
        ours.append(o)
        ratios.append(r / o)
        print(f"seed {seed}: reference {r:.2f} s, mlscale {o:.2f} s, speed-up {r / o:.2f}x",
              flush=True)
    print(f"machine: {machine()}")
    print(f"reference epoch s: {mean_std(reference)}")
    print(f"mlscale epoch s:   {mean_std(ours)}")
    print(f"speed-up (x):      {mean_std(ratios)}")


if __name__ == "__main__":
    main()
