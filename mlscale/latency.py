"""Inference latency with ONNX Runtime: the figures onnxruntime_perf_test and MLPerf use.

For each batch size: warm-up, then a fixed count of runs or runs for a fixed time;
p50/p90/p95/p99, mean, min, max per run and throughput in samples/s (MLPerf's
SingleStream scenario reads p90 at batch 1, Offline reads throughput). Torch eager at
batch 1 is measured beside it on the same threads.

>>> report = benchmark_onnx(onnx_bytes, (1, 28, 28), batch_sizes=(1, 32))  # doctest: +SKIP
>>> report.at_batch(1).p90_ms                                             # doctest: +SKIP
0.05
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from mlscale.errors import MlscaleError
from mlscale.export import INPUT_NAME, ort_session
from mlscale.markdown import markdown_table

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

__all__ = ["DEFAULT_BATCH_SIZES", "LatencyReport", "LatencyStats", "available_memory",
           "benchmark_onnx", "check_batch_sizes", "check_timing", "default_threads"]

DEFAULT_BATCH_SIZES = (1, 32, 256)
WARMUP_RUNS = 5
# A spread past this (p90 over p50, or p50 over the fastest run) is not the model: the
# machine was busy (other processes, oversubscribed threads) while it was timed.
BUSY_SPREAD = 20.0
TABLE_HEADERS = ["engine", "batch", "runs", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "mean ms",
                 "min ms", "max ms", "samples/s"]


@dataclass(frozen=True)
class LatencyStats:
    """Per-run latency figures (milliseconds) and throughput at one batch size."""

    batch_size: int
    runs: int
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    throughput: float  # samples per second

    @classmethod
    def from_seconds(cls, batch_size: int, seconds: np.ndarray) -> LatencyStats:
        import numpy as np

        ms = seconds * 1e3
        p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
        return cls(batch_size, len(ms), float(p50), float(p90), float(p95), float(p99),
                   float(ms.mean()), float(ms.min()), float(ms.max()),
                   float(batch_size * len(ms) / seconds.sum()))


@dataclass(frozen=True)
class LatencyReport:
    """ONNX Runtime latency per batch size, torch eager at batch 1, and the set-up."""

    onnx: list[LatencyStats]
    torch_batch1: LatencyStats | None
    threads: int
    cpu: str
    versions: dict[str, str] = field(default_factory=dict)

    def at_batch(self, batch_size: int) -> LatencyStats:
        return next(s for s in self.onnx if s.batch_size == batch_size)

    @property
    def busy_warning(self) -> str | None:
        """One line when a measurement's spread is implausible for the model (p90 over
        ``BUSY_SPREAD`` x p50, or p50 over ``BUSY_SPREAD`` x the fastest run): the machine
        was busy while it was timed, so the figures overstate the latency. Else None."""
        rows = [("onnxruntime", s) for s in self.onnx]
        if self.torch_batch1 is not None:
            rows.append(("torch eager", self.torch_batch1))
        spreads = []
        for engine, s in rows:
            if s.p90_ms > BUSY_SPREAD * s.p50_ms:
                spreads.append(f"{engine} batch {s.batch_size}: p90 {s.p90_ms:.4g} ms is "
                               f"{s.p90_ms / s.p50_ms:.0f}x p50 {s.p50_ms:.4g} ms")
            elif s.p50_ms > BUSY_SPREAD * s.min_ms:
                spreads.append(f"{engine} batch {s.batch_size}: p50 {s.p50_ms:.4g} ms is "
                               f"{s.p50_ms / s.min_ms:.0f}x the fastest run {s.min_ms:.4g} ms")
        if not spreads:
            return None
        return (f"the machine was busy while timing on {self.threads} thread(s) "
                f"({'; '.join(spreads)}): these latencies overstate the model's; time it "
                "again on an idle machine or with fewer --threads")

    @property
    def largest_batch(self) -> LatencyStats:
        return max(self.onnx, key=lambda s: s.batch_size)

    @property
    def batch1(self) -> LatencyStats | None:
        """Batch 1, what a single request waits for, if it was timed."""
        return next((s for s in self.onnx if s.batch_size == 1), None)

    def headline(self) -> str:
        """One phrase: p90 at batch 1 and the best throughput, with the thread count."""
        batch1, largest = self.batch1, self.largest_batch
        speed = f"p90 {batch1.p90_ms:.3f} ms at batch 1, " if batch1 else ""
        return (f"ONNX Runtime {speed}{largest.throughput:,.0f} samples/s at batch "
                f"{largest.batch_size} on {self.threads} thread(s)")

    def markdown(self) -> str:
        """The latency table as Markdown, with the set-up it was measured on (and a
        warning when the machine was busy)."""
        setup = (f"ONNX Runtime CPU, {self.threads} thread(s), {self.cpu}; "
                 + ", ".join(f"{k} {v}" for k, v in self.versions.items()))
        busy = f"\n\n**Warning:** {self.busy_warning}" if self.busy_warning else ""
        return f"{setup}{busy}\n\n{markdown_table(*self.table())}\n"

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Headers and formatted rows: ONNX Runtime at each batch size, then torch eager."""
        rows = [("onnxruntime", s) for s in self.onnx]
        if self.torch_batch1 is not None:
            rows.append(("torch eager", self.torch_batch1))
        return TABLE_HEADERS, [
            [engine, str(s.batch_size), str(s.runs), f"{s.p50_ms:.4f}", f"{s.p90_ms:.4f}",
             f"{s.p95_ms:.4f}", f"{s.p99_ms:.4f}", f"{s.mean_ms:.4f}", f"{s.min_ms:.4f}",
             f"{s.max_ms:.4f}", f"{s.throughput:,.0f}"] for engine, s in rows]

    def to_dict(self) -> dict[str, Any]:
        """The fields, and ``busy_warning`` (null when the timing looks sound)."""
        return asdict(self) | {"busy_warning": self.busy_warning}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> LatencyReport:
        """The report ``to_dict`` wrote (as logged in every run's latency.json)."""
        torch_batch1 = payload.get("torch_batch1")
        return cls([LatencyStats(**s) for s in payload["onnx"]],
                   None if torch_batch1 is None else LatencyStats(**torch_batch1),
                   int(payload["threads"]), str(payload["cpu"]), dict(payload.get("versions", {})))


def default_threads() -> int:
    """The threads torch runs on in this process: what the trainer trains on (and records
    as ``train_threads``), so one rule sets both. It honours ``OMP_NUM_THREADS`` and
    ``torch.set_num_threads``; unset, torch's default (the cores it may use)."""
    import torch

    return torch.get_num_threads()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _time_runs(run: Callable[[], object], iterations: int | None, seconds: float | None
               ) -> np.ndarray:
    """Per-run wall seconds after a warm-up: ``iterations`` runs, or runs for ``seconds``."""
    import numpy as np

    for _ in range(WARMUP_RUNS):
        run()
    clock = time.perf_counter
    samples: list[float] = []
    deadline = clock() + (seconds or 0.0)
    while (len(samples) < iterations) if iterations is not None else (
            clock() < deadline or len(samples) < 10):
        started = clock()
        run()
        samples.append(clock() - started)
    return np.asarray(samples)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable; else the
    physical memory; None where neither is known)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(batch_sizes: Sequence[int], input_shape: Sequence[int]) -> None:
    """Refuse a batch whose float32 input alone would take over half the free memory
    (the session's activations need at least as much again)."""
    free = available_memory()
    sample_bytes = 4 * math.prod(input_shape)
    largest = max(batch_sizes)
    if free is not None and largest * sample_bytes > free / 2:
        raise MlscaleError(
            f"batch size {largest} needs {largest * sample_bytes / 2**30:.3g} GiB for its "
            f"input alone ({sample_bytes:,} bytes per sample); {free / 2**30:.3g} GiB is "
            f"free: use at most {int(free / 2 // sample_bytes):,}")


def check_batch_sizes(batch_sizes: Sequence[int]) -> None:
    """A one-line error unless every batch size is a positive integer."""
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise MlscaleError(f"batch sizes must be positive integers, got {list(batch_sizes)}")


def check_timing(batch_sizes: Sequence[int], threads: int, iterations: int | None,
                 seconds: float | None, input_shape: Sequence[int] = ()) -> None:
    """A one-line error for settings ``benchmark_onnx`` would refuse, before anything runs."""
    check_batch_sizes(batch_sizes)
    _check_memory(batch_sizes, input_shape)
    if threads < 1:
        raise MlscaleError(f"threads (--threads) must be >= 1, got {threads}")
    if (iterations is None) == (seconds is None):
        raise MlscaleError("give exactly one of iterations (--iterations) or seconds "
                           "(--seconds)")
    if iterations is not None and iterations < 1:
        raise MlscaleError(f"iterations (--iterations) must be >= 1, got {iterations}")
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise MlscaleError(f"seconds (--seconds) must be positive and finite, got {seconds}")


def benchmark_onnx(
    model: bytes | str,
    input_shape: Sequence[int],
    *,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    threads: int | None = None,
    iterations: int | None = None,
    seconds: float | None = 0.25,
    torch_model: nn.Module | None = None,
) -> LatencyReport:
    """Time an ONNX model (bytes or a path) in ONNX Runtime at each batch size.

    ``seconds`` is per batch size (at least 10 runs); pass ``iterations`` (and
    ``seconds=None``) for a fixed count. ``threads`` defaults to ``default_threads()``
    (torch's, as the trainer's). With ``torch_model``, torch eager latency at batch 1 is
    measured on the same number of threads. ``report.busy_warning`` says when the
    spread shows the machine was busy.
    """
    import numpy as np

    threads = default_threads() if threads is None else threads
    check_timing(batch_sizes, threads, iterations, seconds, input_shape)
    session = ort_session(model, threads)
    rng = np.random.default_rng(0)
    stats = []
    for batch_size in batch_sizes:
        x = rng.standard_normal((batch_size, *input_shape), dtype=np.float32)
        feed = {INPUT_NAME: x}

        def run_once(feed: dict[str, np.ndarray] = feed) -> object:
            return session.run(None, feed)

        runs = _time_runs(run_once, iterations, seconds)
        stats.append(LatencyStats.from_seconds(batch_size, runs))
    torch_stats = _torch_batch1(torch_model, input_shape, threads, iterations, seconds) \
        if torch_model is not None else None
    versions = {name: version(name) for name in ("onnxruntime", "onnx", "torch", "numpy")}
    return LatencyReport(stats, torch_stats, threads, cpu_model(), versions)


def _torch_batch1(model: nn.Module, input_shape: Sequence[int], threads: int,
                  iterations: int | None, seconds: float | None) -> LatencyStats:
    import torch

    model = model.eval().to("cpu")
    x = torch.randn(1, *input_shape)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            runs = _time_runs(lambda: model(x), iterations, seconds)
    finally:
        torch.set_num_threads(previous)
    return LatencyStats.from_seconds(1, runs)
