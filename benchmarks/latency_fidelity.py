"""Latency fidelity: mlscale's batch-1 p50 against a bare onnxruntime loop.

Both time the same exported lenet5 file on the same number of threads. The bare loop
is what a user would write: an InferenceSession with only the thread count set, then
`time.perf_counter()` around `session.run` in a loop. Rounds alternate A, B; the ratio
is mlscale p50 / bare p50 per round.

    python benchmarks/latency_fidelity.py --rounds 5 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
import torch

from mlscale.export import INPUT_NAME, export_onnx
from mlscale.latency import benchmark_onnx
from mlscale.models import get_model

from _common import machine, mean_std


def bare_p50_ms(onnx_bytes: bytes, threads: int, iterations: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28), dtype=np.float32)
    for _ in range(5):
        session.run(None, {INPUT_NAME: x})
    times = []
    for _ in range(iterations):
        started = time.perf_counter()
        session.run(None, {INPUT_NAME: x})
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=3000)
    args = parser.parse_args()
    torch.manual_seed(0)
    onnx_bytes = export_onnx(get_model("lenet5"), torch.randn(8, 1, 28, 28)).serialized()
    ours, bare, ratios = [], [], []
    for round_index in range(args.rounds):
        report = benchmark_onnx(onnx_bytes, (1, 28, 28), batch_sizes=(1,), threads=args.threads,
                                iterations=args.iterations, seconds=None)
        o = report.at_batch(1).p50_ms
        b = bare_p50_ms(onnx_bytes, args.threads, args.iterations)
        ours.append(o)
        bare.append(b)
        ratios.append(o / b)
        print(f"round {round_index}: mlscale p50 {o * 1e3:.1f} us, bare loop p50 {b * 1e3:.1f} us,"
              f" ratio {o / b:.3f}", flush=True)
    print(f"machine: {machine()}; onnxruntime {ort.__version__}; threads {args.threads}")
    print(f"mlscale p50 ms: {mean_std(ours)}")
    print(f"bare p50 ms:    {mean_std(bare)}")
    print(f"ratio:          {mean_std(ratios)}")


if __name__ == "__main__":
    main()
