"""Shared helpers for benchmark scripts: machine description and mean ± std."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from importlib.metadata import version


def machine() -> str:
    """CPU model, core count and the library versions a result depends on."""
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if "model name" in line)
    except (OSError, StopIteration):
        pass
    libs = ", ".join(f"{name} {version(name)}" for name in ("torch", "torchvision", "numpy"))
    return (f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; "
            f"Python {platform.python_version()}, {libs}")


def mean_std(values: list[float]) -> str:
    """'mean ± std' of ``values`` (std 0 for one value)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def best_seconds(run: Callable[[], object], repeats: int = 10, warmup: int = 1) -> float:
    """Best wall time of ``repeats`` calls of ``run`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best
