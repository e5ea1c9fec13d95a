from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mlscale.data import Splits
from mlscale.errors import MlscaleError
from mlscale.export import (
    INPUT_NAME,
    OUTPUT_NAME,
    PARITY_TOLERANCE,
    check_exportable,
    export_onnx,
    ort_session,
)
from mlscale.models import get_model


def _real_batch(mnist: Splits, size: int = 64) -> torch.Tensor:
    images = mnist.test_images[:size].unsqueeze(1).float().div(255)
    return images.sub(mnist.info.mean).div(mnist.info.std)


@pytest.mark.parametrize("arch", ["lenet5", "resnet_mini", "efficientnet_mini"])
def test_export_is_checked_and_matches_torch(mnist: Splits, arch: str) -> None:
    torch.manual_seed(0)
    model = get_model(arch, width=0.5 if arch != "lenet5" else 1.0)
    exported = export_onnx(model, _real_batch(mnist))
    assert 0 <= exported.max_abs_diff <= PARITY_TOLERANCE
    session = ort_session(exported.serialized())
    for batch_size in (1, 7):  # the batch axis is dynamic
        x = _real_batch(mnist, batch_size)
        logits = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        with torch.inference_mode():
            expected = model.eval()(x).numpy()
        assert logits.shape == (batch_size, 10)
        np.testing.assert_allclose(logits, expected, atol=PARITY_TOLERANCE)


class _NoisyHead(nn.Module):
    """A model ONNX cannot reproduce: fresh random noise on every call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10] + torch.rand(x.shape[0], 10)


def test_a_parity_failure_reports_the_difference(mnist: Splits) -> None:
    with pytest.raises(MlscaleError, match=r"ONNX export differs from torch by \d"):
        export_onnx(_NoisyHead(), _real_batch(mnist))


class _Bessel(nn.Module):
    """A model ONNX's exporter cannot write: torch.special.i0 has no ONNX operator."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.i0(x).flatten(1)[:, :10]


def test_an_operator_onnx_lacks_is_one_line_and_prints_nothing(
        mnist: Splits, capfd: pytest.CaptureFixture[str]) -> None:
    """Named with the operator, and the exporter's dump of its graph (printed from C++,
    past sys.stdout) kept off stdout, which --json owns."""
    expected = ("the model cannot be exported to ONNX (opset 17, traced at batch 8): "
                "UnsupportedOperatorError: Exporting the operator 'aten::i0' to ONNX opset "
                "version 17 is not supported")
    with pytest.raises(MlscaleError) as error:
        export_onnx(_Bessel(), _real_batch(mnist, 8))
    assert str(error.value) == expected
    with pytest.raises(MlscaleError, match=r"^family f at width=1, depth=1 cannot be exported "
                                           r"to ONNX \(opset 17, traced at batch 1\)"):
        check_exportable(_Bessel(), (1, 28, 28), "family f at width=1, depth=1")
    assert capfd.readouterr().out == ""


def test_a_corrupt_onnx_file_is_a_one_line_error() -> None:
    with pytest.raises(MlscaleError, match="ONNX Runtime cannot load the model") as error:
        ort_session(b"this is not a protobuf")
    assert "\n" not in str(error.value)


def test_resnet_exports_its_downsample_as_a_strided_conv(mnist: Splits) -> None:
    """The zoo trains ResNet's downsample as subsample + 1x1 conv and its pool through its
    own gradient; its graph is the usual one."""
    exported = export_onnx(get_model("resnet_mini", width=0.25), _real_batch(mnist, 8))
    nodes = exported.model.graph.node
    strides = [tuple(a.ints) for n in nodes if n.op_type == "Conv"
               for a in n.attribute if a.name == "strides"]
    assert (2, 2) in strides
    ops = {n.op_type for n in nodes}
    assert "Slice" not in ops and "GlobalAveragePool" in ops and "ReduceMean" not in ops


def test_inception_exports_torchs_concatenation(mnist: Splits) -> None:
    exported = export_onnx(get_model("inception_mini", width=0.25, depth=1),
                           _real_batch(mnist, 8))
    ops = {n.op_type for n in exported.model.graph.node}
    assert "Concat" in ops and "GlobalAveragePool" in ops
