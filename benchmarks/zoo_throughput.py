"""Training GFLOP/s of every family at widths across its search range, fp32 or bf16.

One training step as ``mlscale.train`` takes it (batch 256, channels_last where the
trainer uses it, fused AdamW, freed memory kept in the heap; fp32, or bf16 autocast with
``--bf16``, what ``--precision auto`` picks where the CPU runs bf16 natively), timed as
the best of a few steps after warm-up, for each family at round and non-round widths of
its search range (``pipelines/zoo_budget.yaml``'s). Each width is built twice in the
same run: with the zoo's channel rule (``scale_channels``: counts rounded to the
divisibility rule) and, as the baseline, with the exact ``round(base x width)`` rule it
replaced. GFLOP/s = measured training FLOPs (FlopCounterMode, 2 x MACs) per step / step
time, against the machine's GEMM peak in that precision.

The ceiling column bounds what any work outside the convolutions could buy: each conv
layer alone (forward and the gradients the step takes, at its own input shape and
layout, hot in cache), summed, and the step's FLOPs over that time. Where a family's
best GFLOP/s exceeds twice the ceiling of a width, no fusion of norms, activations or
pooling brings that width within 2x: only faster convolutions can.

    OMP_NUM_THREADS=2 python benchmarks/zoo_throughput.py
    python benchmarks/zoo_throughput.py --families vgg_mini --repeats 5 --bf16
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from flops_utilisation import gemm_peaks

import mlscale.models._registry as registry
from mlscale.measure import measure_model
from mlscale.models import get_model
from mlscale.train import channels_last_is_safe, keep_freed_memory

from _common import best_seconds, machine

BATCH = 256
# Per family: widths spanning its zoo_budget.yaml range, round and non-round channel counts.
WIDTHS = {
    "lenet5": (0.5, 1.0, 2.7, 5.16),
    "alexnet_mini": (0.25, 0.272, 0.53, 1.0),
    "vgg_mini": (0.25, 0.272, 0.53, 1.0),
    "inception_mini": (0.25, 0.272, 0.53, 1.0),
    "resnet_mini": (0.25, 0.272, 0.53, 1.0),
    "efficientnet_mini": (0.25, 0.272, 0.53, 1.0),
}
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_features() -> str:
    """The CPU flags that decide the kernels, and what torch makes of them."""
    flags: set[str] = set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        line = next((line for line in handle if line.startswith("flags")), "")
        flags = set(line.split(":", 1)[-1].split())
    present = [flag for flag in CPU_FLAGS if flag in flags] or ["(no /proc/cpuinfo flags)"]
    return (f"CPU flags: {' '.join(present)}; torch CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}, oneDNN "
            f"{torch.backends.mkldnn.is_available()}, native bf16 "
            f"{bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}")


@contextlib.contextmanager
def exact_channels() -> Iterator[None]:
    """Build with the plain ``round(base x width)`` rule (the baseline) inside the block."""
    import sys

    def exact(base: float, width: float) -> int:
        return max(1, round(base * width))

    rounded = registry.scale_channels
    modules = [m for name, m in sys.modules.items() if name.startswith("mlscale.models.")
               and m is not registry and getattr(m, "scale_channels", None) is rounded]
    for module in modules:
        module.scale_channels = exact  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module in modules:
            module.scale_channels = rounded  # type: ignore[attr-defined]


def step_seconds(model: torch.nn.Module, repeats: int, bf16: bool = False) -> float:
    """Best time of one training step at batch 256 (fp32, or bf16 autocast), as the
    trainer takes it (with its allocator setting: freed activations stay in the heap)."""
    keep_freed_memory()
    channels_last = channels_last_is_safe(model)
    x = torch.randn(BATCH, 1, 28, 28)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    model.train()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return best_seconds(step, repeats, warmup=2)


def conv_seconds(model: torch.nn.Module, repeats: int, bf16: bool = False) -> float:
    """Sum over conv layers of the best time of each alone: forward and the step's gradients
    (the input's only where the layer's input needs one) at its batch-256 input shape."""
    inputs_seen: dict[torch.nn.Conv2d, tuple[torch.Size, torch.dtype, bool]] = {}

    def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _: object) -> None:
        x = inputs[0]
        inputs_seen[module] = (x.shape, x.dtype, x.requires_grad)  # type: ignore[index]

    hooks = [m.register_forward_hook(record) for m in model.modules()
             if isinstance(m, torch.nn.Conv2d)]
    channels_last = channels_last_is_safe(model)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(torch.randn(BATCH, 1, 28, 28).contiguous(memory_format=memory_format))
    for hook in hooks:
        hook.remove()
    total = 0.0
    for conv, (shape, dtype, needs_grad) in inputs_seen.items():
        x = torch.randn(shape).to(dtype).contiguous(memory_format=memory_format)
        x.requires_grad_(needs_grad)

        def step(conv: torch.nn.Conv2d = conv, x: torch.Tensor = x) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y = conv(x)
            y.backward(torch.ones_like(y))

        total += best_seconds(step, repeats, warmup=2)
    return total


def conv_channels(model: torch.nn.Module) -> str:
    """The distinct conv output channel counts, in order (what the kernels see)."""
    seen: list[int] = []
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d) and module.out_channels not in seen:
            seen.append(module.out_channels)
    return "/".join(map(str, seen[:6])) + ("/..." if len(seen) > 6 else "")


def measure(family: str, width: float, repeats: int, bf16: bool
            ) -> tuple[str, int, float, float, float]:
    """(channels, params, train FLOPs per sample, GFLOP/s, ceiling GFLOP/s) at ``width``."""
    torch.manual_seed(0)
    model = get_model(family, width=width)
    cost = measure_model(model, (1, 28, 28))
    seconds = step_seconds(model, repeats, bf16)
    ceiling = conv_seconds(model, repeats, bf16)
    step_flops = cost.train_flops_per_sample * BATCH
    return (conv_channels(model), cost.params, cost.train_flops_per_sample,
            step_flops / seconds / 1e9, step_flops / ceiling / 1e9)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(WIDTHS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast instead of fp32")
    args = parser.parse_args()
    precision = torch.bfloat16 if args.bf16 else torch.float32
    peak = max(gemm_peaks(precision).values()) / 1e9
    print(f"machine: {machine()}")
    print(cpu_features())
    print(f"{'bf16' if args.bf16 else 'fp32'} peak (2048^3 GEMM, best of torch.mm and a oneDNN "
          f"1x1 conv): {peak:.0f} GFLOP/s")
    print("| family | width | rule | channels | params | train MFLOPs/sample | GFLOP/s "
          "| of family best | of peak | ceiling (convs alone) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for family in args.families:
        rows = []
        for width in WIDTHS[family]:
            with exact_channels():
                rows.append((width, "exact", *measure(family, width, args.repeats, args.bf16)))
            rows.append((width, "divisible", *measure(family, width, args.repeats, args.bf16)))
        for rule in ("exact", "divisible"):
            best = max(row[5] for row in rows if row[1] == rule)
            for width, name, channels, params, flops, rate, ceiling in rows:
                if name == rule:
                    print(f"| {family} | {width:g} | {rule} | {channels} | {params:,} | "
                          f"{flops / 1e6:.1f} | {rate:.0f} | {rate / best:.0%} | "
                          f"{rate / peak:.0%} | {ceiling:.0f} |", flush=True)
            worst = min(row[5] for row in rows if row[1] == rule)
            lowest_ceiling = min(row[6] for row in rows if row[1] == rule)
            print(f"| {family} | | {rule} | best / worst GFLOP/s | | | {best / worst:.2f}x "
                  f"| | | best / lowest ceiling {best / lowest_ceiling:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
