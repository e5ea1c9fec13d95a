"""Training step time with mlscale's CPU layers against torch's own, same models, same run.

mlscale's zoo trains through three layers of ``mlscale.models._fast_cpu`` where torch's
CPU kernels are slow: ``BatchNorm2d`` (channels_last batch norm with channel counts that
are not a multiple of 16), ``SubsampledConv2d`` (ResNet's strided 1x1 downsample, which
lets ResNet train in channels_last) and ``DepthwiseConv2d`` (EfficientNet's strided
depthwise conv, in fp32 under bf16 autocast). The baseline is each model with those
layers turned back into torch's (``nn.BatchNorm2d``, ``nn.Conv2d``; ResNet then trains
in NCHW, as before). One step at batch 256 as the trainer takes it, best of a few after
warm-up, fp32 and bf16 autocast (bf16 only where the CPU runs it natively).

    OMP_NUM_THREADS=2 python benchmarks/thin_layers.py
    python benchmarks/thin_layers.py --families resnet_mini --widths 0.25 1
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn
from zoo_throughput import cpu_features, step_seconds

from mlscale.measure import measure_model
from mlscale.models import get_model
from mlscale.models._fast_cpu import BatchNorm2d, DepthwiseConv2d, SubsampledConv2d
from mlscale.train import bf16_is_native

from _common import machine

BATCH = 256
FAMILIES = ("vgg_mini", "inception_mini", "resnet_mini", "efficientnet_mini")
TORCH_LAYER = {BatchNorm2d: nn.BatchNorm2d, SubsampledConv2d: nn.Conv2d,
               DepthwiseConv2d: nn.Conv2d}


def with_torch_layers(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose mlscale layers are torch's (same parameters and outputs)."""
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if type(module) in TORCH_LAYER:
            module.__class__ = TORCH_LAYER[type(module)]
    return plain


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    parser.add_argument("--widths", nargs="+", type=float, default=[0.25, 0.5, 1.0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    precisions = [False, True] if bf16_is_native(torch.device("cpu")) else [False]
    print(f"machine: {machine()}")
    print(cpu_features())
    print("| family | width | precision | torch's layers ms | mlscale's layers ms | speed-up "
          "| GFLOP/s (mlscale's) |")
    print("| --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for family in args.families:
        for width in args.widths:
            torch.manual_seed(0)
            model = get_model(family, width=width)
            flops = measure_model(model, (1, 28, 28)).train_flops_per_sample * BATCH
            for bf16 in precisions:
                baseline = step_seconds(with_torch_layers(model), args.repeats, bf16)
                ours = step_seconds(copy.deepcopy(model), args.repeats, bf16)
                print(f"| {family} | {width:g} | {'bf16' if bf16 else 'fp32'} | "
                      f"{baseline * 1e3:.1f} | {ours * 1e3:.1f} | {baseline / ours:.2f}x | "
                      f"{flops / ours / 1e9:.0f} |", flush=True)


if __name__ == "__main__":
    main()
