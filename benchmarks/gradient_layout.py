"""Training step time with gradients kept in the activations' layout, against torch's.

torch's backward of slicing and of global average pooling returns NCHW gradients for
channels_last maps, and its backward of ``torch.cat`` hands each input a strided channel
slice; the layer before then runs torch's mixed-layout backward loops. mlscale's
``SubsampledConv2d`` (ResNet's shortcut), ``GlobalAvgPool2d`` and ``concat_channels``
(Inception's branches) hand gradients back in the activation's layout. The baseline is
the same model with torch's behaviour back in those three places (a plain slice,
``nn.AdaptiveAvgPool2d``, ``torch.cat``), everything else equal. One step at batch 256 as
the trainer takes it, best of a few after warm-up; baseline and mlscale's alternate,
twice each, in one process.

    OMP_NUM_THREADS=2 python benchmarks/gradient_layout.py
    python benchmarks/gradient_layout.py --families resnet_mini --widths 0.25 --bf16
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import types
from collections.abc import Iterator

import torch
from torch import nn
from zoo_throughput import cpu_features, step_seconds

import mlscale.models._fast_cpu as fast_cpu
import mlscale.models.inception as inception
from mlscale.models import get_model

from _common import machine

FAMILIES = ("resnet_mini", "inception_mini", "efficientnet_mini")


@contextlib.contextmanager
def torch_gradient_layouts(model: nn.Module) -> Iterator[nn.Module]:
    """A copy of ``model`` whose subsample, global pool and concatenation are torch's."""
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if isinstance(module, fast_cpu.GlobalAvgPool2d):
            module.__class__ = nn.AdaptiveAvgPool2d
    subsample, concat = fast_cpu._Subsample, inception.concat_channels
    fast_cpu._Subsample = types.SimpleNamespace(  # type: ignore[assignment]
        apply=lambda x, stride: x[:, :, ::stride[0], ::stride[1]])
    inception.concat_channels = lambda maps, training: torch.cat(maps, dim=1)  # type: ignore[assignment]
    try:
        yield plain
    finally:
        fast_cpu._Subsample, inception.concat_channels = subsample, concat  # type: ignore[misc]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    parser.add_argument("--widths", nargs="+", type=float, default=[0.25, 1.0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast instead of fp32")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(cpu_features())
    print("| family | width | precision | torch's gradients ms | kept layout ms | speed-up |")
    print("| --- | --- | --- | --- | --- | --- |", flush=True)
    for family in args.families:
        for width in args.widths:
            torch.manual_seed(0)
            model = get_model(family, width=width)
            baseline, ours = [], []
            for _ in range(2):
                with torch_gradient_layouts(model) as plain:
                    baseline.append(step_seconds(plain, args.repeats, args.bf16))
                ours.append(step_seconds(copy.deepcopy(model), args.repeats, args.bf16))
            print(f"| {family} | {width:g} | {'bf16' if args.bf16 else 'fp32'} | "
                  f"{min(baseline) * 1e3:.1f} | {min(ours) * 1e3:.1f} | "
                  f"{min(baseline) / min(ours):.2f}x |", flush=True)


if __name__ == "__main__":
    main()
