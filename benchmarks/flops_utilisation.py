"""Training FLOP/s as a share of the machine's measured matmul peak.

Peak: the best rate of two large GEMMs, in fp32 (and in bf16, since training uses bf16
autocast where native): torch.mm (MKL, which takes a slower path on AMD CPUs) and the
same GEMM as a 1x1 convolution through oneDNN, the library that runs the zoo's convs.
The higher of the two is the machine's measured peak. Training FLOP/s: measured training FLOPs
(FlopCounterMode, FLOPs = 2 x MACs) spent divided by the time in training steps, for
lenet5 and the largest default model of the zoo (by parameters), at a fixed FLOPs
budget per model.

    python benchmarks/flops_utilisation.py
"""

from __future__ import annotations

import argparse

import torch

from mlscale.data import load
from mlscale.measure import count_params
from mlscale.models import get_model, list_models, model_spec
from mlscale.train import TrainConfig, train

from _common import best_seconds, machine


def gemm_peaks(dtype: torch.dtype, n: int = 2048) -> dict[str, float]:
    """FLOP/s of an n x n x n GEMM by MKL (torch.mm) and by oneDNN (a 1x1 conv)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    side = 32  # n = batch * side * side rows for the conv form
    x = torch.randn(n // side**2, n, side, side).to(dtype).contiguous(
        memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(n, n, 1, bias=False).to(dtype).to(memory_format=torch.channels_last)
    flops = 2 * n**3
    with torch.no_grad():
        return {"torch.mm": flops / best_seconds(lambda: torch.mm(a, b)),
                "oneDNN 1x1 conv": flops / best_seconds(lambda: conv(x))}


def largest_default_model() -> str:
    return max(list_models(), key=lambda name: count_params(get_model(name)))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--budget", type=float, default=3e11, help="training FLOPs per model")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        rates = gemm_peaks(dtype)
        peaks[name] = max(rates.values())
        print(f"{name} GEMM: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in rates.items()))
    fp32_peak, bf16_peak = peaks["fp32"], peaks["bf16"]
    data = load("mnist")
    for arch in ("lenet5", largest_default_model()):
        for precision in ("fp32", "bf16"):
            result = train(TrainConfig(arch=arch, epochs=None, max_train_flops=args.budget,
                                       precision=precision), data=data)
            rate = result.train_flops / result.train_time_s
            print(f"{arch} (default dials, {model_spec(arch).default_width:g}x width) "
                  f"{precision}: {rate / 1e9:.1f} GFLOP/s = {rate / fp32_peak:.1%} of fp32 peak, "
                  f"{rate / bf16_peak:.1%} of bf16 peak", flush=True)


if __name__ == "__main__":
    main()
