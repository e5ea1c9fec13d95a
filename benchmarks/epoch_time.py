"""LeNet-5 epoch time: mlscale's trainer against a torchvision + DataLoader reference.

The reference is the textbook pipeline: torchvision.datasets.MNIST with per-sample
ToTensor + Normalize, a DataLoader with batch 128, the same model (lenet5) and the
same optimizer (AdamW), over the same 55,000 training samples. Both are timed over
their training steps only; the ratio is reference / mlscale per epoch, per seed.

    python benchmarks/epoch_time.py --seeds 3
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
import torchvision
from _common import machine, mean_std
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

from mlscale.data import DATASETS, load, prepare, split_validation
from mlscale.models import get_model
from mlscale.train import TrainConfig, train


def reference_epoch_seconds(seed: int) -> float:
    info = DATASETS["mnist"]
    root = prepare("mnist").root
    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((info.mean,), (info.std,))]
    )
    dataset = torchvision.datasets.MNIST(root, train=True, transform=transform)
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


def mlscale_epoch_seconds(seed: int, data) -> float:
    result = train(TrainConfig(arch="lenet5", epochs=1, seed=seed), data=data)
    return result.train_time_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    data = load("mnist")
    ours, reference, ratios = [], [], []
    for seed in range(args.seeds):
        r = reference_epoch_seconds(seed)
        o = mlscale_epoch_seconds(seed, data)
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
