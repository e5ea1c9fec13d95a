"""Export a trained model to ONNX, check it, and prove it computes what torch computes.

>>> exported = export_onnx(model, example_batch)     # doctest: +SKIP
>>> exported.max_abs_diff < PARITY_TOLERANCE        # doctest: +SKIP
True
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlscale.errors import MlscaleError, first_line

if TYPE_CHECKING:
    import onnx
    import onnxruntime
    import torch
    from torch import nn

__all__ = ["INPUT_NAME", "OPSET", "OUTPUT_NAME", "PARITY_TOLERANCE", "ExportedModel",
           "check_exportable", "export_onnx", "ort_session"]

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
PARITY_TOLERANCE = 1e-4
OPSET = 17


@dataclass(frozen=True)
class ExportedModel:
    """A checked ONNX model with its measured parity against torch."""

    model: onnx.ModelProto
    max_abs_diff: float  # over the real batch it was checked on, fp32 logits

    def serialized(self) -> bytes:
        return self.model.SerializeToString()


def ort_session(model: bytes | str, threads: int = 1) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session: all graph optimisations, fixed threads, no spinning.

    Spinning is off because idle ORT threads that spin slow down torch in the same
    process (and any other work on a small machine).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own Fail/InvalidGraph/... types
        raise MlscaleError(f"ONNX Runtime cannot load the model: {first_line(error)}") from None


def check_exportable(model: nn.Module, input_shape: tuple[int, int, int], what: str) -> None:
    """Fail fast, before any training, on a model torch cannot export to ONNX: the exporter
    on ``model`` as it is (untrained) at batch 1. ``what`` names the model in the error.

    Measured on 2 shared cores: 12-230 ms for the zoo's families at their default and
    widest dials, next to seconds or more of training; and the zoo does not always export
    (``alexnet_mini`` on 32 x 32 images pools to a size ONNX's exporter refuses), so every
    family is checked.
    """
    import torch

    _onnx_bytes(model.eval().to("cpu"), torch.zeros(1, *input_shape), what)


def export_onnx(model: nn.Module, batch: torch.Tensor) -> ExportedModel:
    """Export ``model`` with a dynamic batch axis, run ``onnx.checker``, and compare
    ONNX Runtime's logits with torch's on ``batch`` (a real, normalised batch).

    Uses torch's TorchScript-based exporter: for these small convnets it takes about
    0.2 s against 1-2.5 s for the torch.export-based one, and the parity check below
    guards what it produces. A difference above PARITY_TOLERANCE is an error that
    carries the number.
    """
    import numpy as np
    import onnx
    import torch

    model = model.eval().to("cpu")
    batch = batch.to("cpu", torch.float32).contiguous()
    serialized = _onnx_bytes(model, batch, "the model")
    proto = onnx.load_from_string(serialized)
    onnx.checker.check_model(proto, full_check=True)

    with torch.inference_mode():
        expected = model(batch).numpy()
    session = ort_session(serialized)
    actual = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0]
    max_abs_diff = float(np.max(np.abs(actual - expected)))
    if not max_abs_diff <= PARITY_TOLERANCE:
        raise MlscaleError(
            f"ONNX export differs from torch by {max_abs_diff:.3g} (max abs logit difference, "
            f"tolerance {PARITY_TOLERANCE:g})"
        )
    return ExportedModel(proto, max_abs_diff)


def _onnx_bytes(model: nn.Module, batch: torch.Tensor, what: str) -> bytes:
    """``model`` as ONNX with a dynamic batch axis; an operator the exporter lacks (or any
    failure of it) is a one-line error naming ``what`` and the exporter's reason."""
    import torch

    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), _stdout_discarded():
            warnings.simplefilter("ignore")  # the exporter's deprecation notice; see export_onnx
            torch.onnx.export(
                model, (batch,), buffer,  # type: ignore[arg-type]  # the legacy path takes a file
                dynamo=False, opset_version=OPSET,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    except Exception as error:  # UnsupportedOperatorError, SymbolicValueError, a trace error
        reason = first_line(error).split(" Please feel free")[0]  # torch's plea to report it
        raise MlscaleError(f"{what} cannot be exported to ONNX (opset {OPSET}, traced at "
                           f"batch {len(batch)}): "
                           f"{type(error).__name__}: {reason[:300]}") from None
    return buffer.getvalue()


@contextlib.contextmanager
def _stdout_discarded() -> Iterator[None]:
    """File descriptor 1 sent to a scratch file: on failure the exporter prints its whole
    TorchScript graph there from C++ (past ``sys.stdout``), which would break ``--json``."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with tempfile.TemporaryFile() as scratch:
            os.dup2(scratch.fileno(), 1)
            try:
                yield
            finally:
                os.dup2(saved, 1)
    finally:
        os.close(saved)
