"""The cost card: what one trained model cost and scored, as one typed record.

A registered version carries it as tags and its run as metrics; every column list the
registry, the budget advisor and the reports read is derived from its fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlscale.latency import LatencyReport
    from mlscale.train import TrainResult

__all__ = ["COST_CARD", "CostCard", "tag_value"]


def _shown(header: str, fmt: str) -> dict[str, str]:
    """How a table shows a figure: its column header and format."""
    return {"header": header, "format": fmt}


@dataclass(frozen=True)
class CostCard:
    """Size, compute, quality and serving cost of one model (FLOPs = 2 x MACs)."""

    params: int = field(metadata=_shown("params", "{:,.0f}"))
    flops_per_sample: int = field(metadata=_shown("FLOPs/sample", "{:,.0f}"))
    train_flops_per_sample: int = field(metadata=_shown("train FLOPs/sample", "{:,.0f}"))
    train_flops: float = field(metadata=_shown("train FLOPs", "{:.3g}"))
    samples_seen: int = field(metadata=_shown("samples seen", "{:,.0f}"))
    train_size: int = field(metadata=_shown("train size", "{:,.0f}"))
    test_accuracy: float = field(metadata=_shown("test acc", "{:.2%}"))
    test_loss: float = field(metadata=_shown("test loss", "{:.4f}"))
    error_rate: float = field(metadata=_shown("error rate", "{:.2%}"))
    # ONNX Runtime samples/s at the largest batch timed
    throughput: float = field(metadata=_shown("samples/s", "{:,.0f}"))
    latency_threads: int = field(metadata=_shown("threads", "{:.0f}"))
    # batch 1, where batch 1 was timed
    latency_p50_ms: float | None = field(default=None, metadata=_shown("p50 ms", "{:.4f}"))
    latency_p90_ms: float | None = field(default=None, metadata=_shown("p90 ms", "{:.4f}"))
    latency_p99_ms: float | None = field(default=None, metadata=_shown("p99 ms", "{:.4f}"))
    # seconds in training steps (no evaluation or set-up), and the CPU threads they ran on
    # (0: on a GPU), where the trainer recorded them
    train_time_s: float | None = field(default=None, metadata=_shown("train s", "{:.1f}"))
    train_threads: int | None = field(default=None, metadata=_shown("train threads", "{:.0f}"))

    @staticmethod
    def column(name: str) -> tuple[str, str, str]:
        """``(header, name, format)`` of figure ``name``: one look in every table."""
        shown = {f.name: f.metadata for f in fields(CostCard)}[name]
        return shown["header"], name, shown["format"]

    @classmethod
    def of(cls, result: TrainResult, latency: LatencyReport) -> CostCard:
        """The card of a training result and its ONNX Runtime latency."""
        batch1 = latency.batch1
        return cls(
            params=result.params, flops_per_sample=result.flops_per_sample,
            train_flops_per_sample=result.train_flops_per_sample,
            train_flops=result.train_flops, samples_seen=result.samples_seen,
            train_size=result.train_size, test_accuracy=result.test_accuracy,
            test_loss=result.test_loss, error_rate=result.error_rate,
            throughput=latency.largest_batch.throughput, latency_threads=latency.threads,
            latency_p50_ms=batch1.p50_ms if batch1 else None,
            latency_p90_ms=batch1.p90_ms if batch1 else None,
            latency_p99_ms=batch1.p99_ms if batch1 else None,
            train_time_s=result.train_time_s,
            train_threads=0 if result.config.device.startswith("cuda") else _torch_threads())

    def figures(self) -> dict[str, float]:
        """The figures that exist, as MLflow metrics."""
        return {k: float(v) for k, v in asdict(self).items() if v is not None}

    def tags(self) -> dict[str, str]:
        """The figures that exist, as registered-version tags."""
        return {k: tag_value(v) for k, v in asdict(self).items() if v is not None}


COST_CARD: tuple[str, ...] = tuple(f.name for f in fields(CostCard))


def _torch_threads() -> int:
    """The CPU threads torch runs on in this process (the trainer's)."""
    import torch

    return torch.get_num_threads()


def tag_value(value: object) -> str:
    """A tag's text: floats to six significant digits, anything else as ``str``."""
    return f"{value:.6g}" if isinstance(value, float) else str(value)
