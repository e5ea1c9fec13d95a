"""Fast training on whole-dataset tensors, budgeted by epochs or by training FLOPs.

The dataset stays in memory as uint8; each step gathers a batch by index and
normalises it in one vectorised op, so no per-sample Python runs in the loop.

>>> result = train(TrainConfig(arch="lenet5", epochs=1, train_size=1000))  # doctest: +SKIP
>>> round(result.test_accuracy, 2)                                       # doctest: +SKIP
0.9
"""

from __future__ import annotations

from mlscale.train._config import EpochMetrics, Progress, TrainConfig, TrainResult
from mlscale.train._device import (
    bf16_is_native,
    channels_last_is_safe,
    keep_freed_memory,
    precision_warning,
)
from mlscale.train._loop import auto_batch_size, evaluate, train

__all__ = ["EpochMetrics", "Progress", "TrainConfig", "TrainResult", "auto_batch_size",
           "bf16_is_native", "channels_last_is_safe", "evaluate", "keep_freed_memory",
           "precision_warning", "train"]
