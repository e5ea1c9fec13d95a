"""Evaluation speed by batch size: every family's default model evaluated on MNIST's
10,000 test images plus a 2,000-image validation split (what each trained run evaluates),
in batches of 1,000 (the baseline) and of 256 (``mlscale.train``'s ``EVAL_BATCH``), in the
same run, channels_last where the trainer uses it, fp32, inference mode.

    OMP_NUM_THREADS=2 python benchmarks/eval_batch.py
"""

from __future__ import annotations

import time

import torch

import mlscale.train._loop as loop
from mlscale.data import load
from mlscale.models import get_model, model_spec
from mlscale.train import channels_last_is_safe

from _common import machine

ZOO = ("lenet5", "alexnet_mini", "vgg_mini", "inception_mini", "resnet_mini",
       "efficientnet_mini")
BASELINE, CHOSEN = 1000, 256


def _seconds(model: torch.nn.Module, batches: loop._Batches, batch_size: int) -> float:
    """Best of two timed evaluations of every sample at ``batch_size``."""
    loop.EVAL_BATCH = batch_size
    loop.evaluate(model, batches)  # warm-up: oneDNN primitives for this batch shape
    times = []
    for _ in range(2):
        started = time.perf_counter()
        loop.evaluate(model, batches)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    print(machine())
    data = load("mnist")
    images = torch.cat([data.test_images, data.train_images[:2000]])
    labels = torch.cat([data.test_labels, data.train_labels[:2000]])
    print(f"| family | batch {BASELINE} (s) | batch {CHOSEN} (s) | ratio |")
    print("|---|---|---|---|")
    for family in ZOO:
        spec = model_spec(family)
        model = get_model(family, width=spec.default_width, depth=spec.default_depth)
        channels_last = channels_last_is_safe(model)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        batches = loop._Batches(images, labels, data.info.mean, data.info.std, channels_last)
        base, chosen = _seconds(model, batches, BASELINE), _seconds(model, batches, CHOSEN)
        print(f"| {family} | {base:.2f} | {chosen:.2f} | {base / chosen:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
