"""The CPU training paths: torch's results from mlscale's kernel and layouts, and fallbacks."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import cpp_extension

import mlscale.models as models
import mlscale.models._fast_cpu as fast_cpu
import mlscale.models._native as native
from mlscale.models._fast_cpu import (
    BatchNorm2d,
    Conv2d,
    ConvBnAct,
    DepthwiseConv2d,
    GlobalAvgPool2d,
    MaxPool2x2,
    SubsampledConv2d,
    concat_channels,
)
from mlscale.train import channels_last_is_safe

CHANNELS_LAST = torch.channels_last


def _bf16_batch(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator).to(torch.bfloat16)
    return x.contiguous(memory_format=CHANNELS_LAST).requires_grad_()


def _pool_and_grad(pool: nn.Module, x: torch.Tensor,
                   upstream: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    x = x.detach().clone().requires_grad_()
    y = pool(x)
    y.backward(upstream)
    assert x.grad is not None
    return y.detach(), x.grad, type(y.grad_fn).__name__


def _with_ties(x: torch.Tensor) -> torch.Tensor:
    """``x`` with every kind of tie planted in its first windows, and a NaN."""
    x = x.detach().clone()
    x[0, 0, 0:2, 0:2] = 1.0  # all four equal
    x[0, 0, 0:2, 2:4] = torch.tensor([[0.0, 2.0], [2.0, 0.0]])  # top-right vs bottom-left
    x[0, 0, 0:2, 4:6] = torch.tensor([[0.0, 0.0], [3.0, 3.0]])  # bottom row
    x[0, 1, 0:2, 0:2] = torch.tensor([[1.0, float("nan")], [5.0, 0.0]])
    return x.contiguous(memory_format=CHANNELS_LAST)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(8, 6, 28, 28), (4, 3, 10, 10), (4, 20, 6, 8), (2, 12, 2, 6)])
def test_pool_equals_torch_bit_for_bit_ties_included(shape: tuple[int, ...],
                                                     dtype: torch.dtype) -> None:
    x = _with_ties(_bf16_batch(shape).to(dtype))
    upstream = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2).to(dtype)
    y, grad, node = _pool_and_grad(MaxPool2x2(), x, upstream)
    y_ref, grad_ref, _ = _pool_and_grad(nn.MaxPool2d(2), x, upstream)

    assert node == "_MaxPool2x2FunctionBackward"
    # NaN where torch has NaN (torch's vectorised loop may return another NaN payload).
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(grad, grad_ref)
    assert y.is_contiguous(memory_format=CHANNELS_LAST)
    assert grad.is_contiguous(memory_format=CHANNELS_LAST)


def test_pool_backward_accepts_a_gradient_in_any_layout() -> None:
    x = _bf16_batch((4, 6, 8, 8))
    upstream = torch.randn(4, 6, 4, 4).to(torch.bfloat16)  # NCHW, not channels_last
    _, grad, _ = _pool_and_grad(MaxPool2x2(), x, upstream)
    _, grad_ref, _ = _pool_and_grad(nn.MaxPool2d(2), x, upstream)
    assert torch.equal(grad, grad_ref)


@pytest.mark.parametrize("case", ["fp16", "nchw", "16 channels", "odd side", "eval", "no grad",
                                  "no kernels"])
def test_pool_falls_back_to_torch_outside_its_rule(case: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    shape = {"16 channels": (2, 16, 8, 8), "odd side": (2, 6, 7, 8)}.get(case, (2, 6, 8, 8))
    x = _bf16_batch(shape)
    if case == "fp16":
        x = x.detach().half().requires_grad_()
    if case == "nchw":
        x = x.detach().contiguous().requires_grad_()
    if case == "no kernels":
        monkeypatch.setattr(fast_cpu, "native_kernels", lambda: False)
    pool = MaxPool2x2()
    if case == "eval":
        pool.eval()
    with torch.set_grad_enabled(case != "no grad"):
        y = pool(x)
    assert torch.equal(y, F.max_pool2d(x, 2))
    if case != "no grad":
        assert type(y.grad_fn).__name__ == "MaxPool2DWithIndicesBackward0"


def test_kernel_rejects_what_it_was_not_built_for() -> None:
    assert native.native_kernels()
    with pytest.raises(RuntimeError, match="channels_last"):
        torch.ops.mlscale.max_pool2x2_forward(torch.zeros(1, 6, 4, 4))
    with pytest.raises(RuntimeError, match="even"):
        torch.ops.mlscale.max_pool2x2_forward(
            torch.zeros(1, 6, 3, 4).contiguous(memory_format=CHANNELS_LAST))
    with pytest.raises(RuntimeError, match="bf16 or fp32"):
        torch.ops.mlscale.max_pool2x2_backward(torch.zeros(1, 6, 2, 2, dtype=torch.half),
                                               torch.zeros(1, 2, 2, 6, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match="winners"):
        torch.ops.mlscale.max_pool2x2_backward(torch.zeros(1, 6, 2, 2),
                                               torch.zeros(1, 2, 2, 5, dtype=torch.uint8))


def test_a_failed_build_falls_back_with_one_line(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    def no_compiler(**_: object) -> None:
        raise RuntimeError("Error building extension 'mlscale_cpu_kernels'\nc++: not found")

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # nothing built there
    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    assert native.native_kernels.__wrapped__() is False
    assert capsys.readouterr().err.strip().splitlines() == [
        "mlscale: compiling its CPU kernels once for this machine (about 20 s)",
        "mlscale: CPU kernels unavailable, using torch's (Error building extension "
        "'mlscale_cpu_kernels')",
    ]


def test_the_built_library_is_found_by_its_source_hash(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A second process loads the library built for these sources instead of rebuilding."""
    monkeypatch.setattr(cpp_extension, "load", None)  # any build attempt would fail
    assert native.native_kernels.__wrapped__() is True


def _conv_and_grads(conv: nn.Conv2d, x: torch.Tensor,
                    upstream: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], str]:
    x = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    y.backward(upstream)
    grads = [x.grad, conv.weight.grad, conv.bias.grad]
    assert all(g is not None for g in grads)
    return y.detach(), [g for g in grads if g is not None], type(y.grad_fn).__name__


@pytest.mark.parametrize(("in_channels", "kernel", "padding"), [(6, 5, 0), (3, 3, 1)])
def test_conv_matches_torch_forward_and_its_gradients(in_channels: int, kernel: int,
                                                      padding: int) -> None:
    torch.manual_seed(0)
    conv = Conv2d(in_channels, 16, kernel, padding=padding).to(memory_format=CHANNELS_LAST)
    reference = nn.Conv2d(in_channels, 16, kernel, padding=padding).to(memory_format=CHANNELS_LAST)
    reference.load_state_dict(conv.state_dict())
    x = _bf16_batch((8, in_channels, 14, 14))
    side = 14 - kernel + 1 + 2 * padding
    upstream = torch.randn(8, 16, side, side).to(torch.bfloat16)

    y, grads, node = _conv_and_grads(conv, x, upstream)
    y_ref, grads_ref, _ = _conv_and_grads(reference, x, upstream)

    assert node == "_Conv2dFunctionBackward"
    assert torch.equal(y, y_ref)
    assert grads[0].is_contiguous(memory_format=CHANNELS_LAST)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        assert grad.dtype == grad_ref.dtype and grad.shape == grad_ref.shape
        # Another summation order in bf16: agreement to bf16's precision.
        assert torch.allclose(grad.float(), grad_ref.float(), rtol=2e-2,
                              atol=2e-2 * grad_ref.float().abs().max().item())


@pytest.mark.parametrize("case", ["no autocast", "16 channels", "input without grad", "eval"])
def test_conv_falls_back_to_torch_outside_its_rule(case: str) -> None:
    in_channels = 16 if case == "16 channels" else 6
    conv = Conv2d(in_channels, 8, 3).to(memory_format=CHANNELS_LAST)
    if case == "eval":
        conv.eval()
    x = _bf16_batch((2, in_channels, 8, 8))
    if case == "input without grad":
        x = x.detach()
    if case == "no autocast":
        conv = conv.to(torch.bfloat16)
        y = conv(x)
    else:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
    assert type(y.grad_fn).__name__ == "ConvolutionBackward0"


def test_lenet5_trains_through_both_paths_like_the_plain_network() -> None:
    """One bf16 step: the same loss as the network built from plain torch layers."""
    torch.manual_seed(0)
    model = models.get_model("lenet5", depth=2).to(memory_format=CHANNELS_LAST)
    plain = copy.deepcopy(model)
    plain.features = nn.Sequential(*[
        _plain(layer) for layer in plain.features  # type: ignore[union-attr]
    ])
    x = torch.randn(32, 1, 28, 28).contiguous(memory_format=CHANNELS_LAST)
    labels = torch.randint(0, 10, (32,))
    losses, nodes = [], set()
    for net in (model, plain):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = net.features[:3](x)  # type: ignore[index]
            nodes.add(type(hidden.grad_fn).__name__)
            loss = F.cross_entropy(net(x), labels)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == losses[1]
    assert "_Conv2dFunctionBackward" in nodes  # stage 1's 3x3 conv: 6 channels in
    for p, q in zip(model.parameters(), plain.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        assert torch.allclose(p.grad, q.grad, rtol=0.1, atol=0.1 * q.grad.abs().max().item())


def _plain(layer: nn.Module) -> nn.Module:
    if isinstance(layer, nn.Conv2d):
        plain = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                          padding=layer.padding)
        plain.load_state_dict(layer.state_dict())
        return plain.to(memory_format=CHANNELS_LAST)
    if isinstance(layer, nn.MaxPool2d):
        return nn.MaxPool2d(2)
    return layer


def _norm_and_grads(norm: nn.Module, x: torch.Tensor, upstream: torch.Tensor
                    ) -> tuple[torch.Tensor, list[torch.Tensor], str]:
    x = x.detach().clone().requires_grad_()
    y = norm(x)
    y.backward(upstream)
    assert x.grad is not None and norm.weight.grad is not None and norm.bias.grad is not None
    return y.detach(), [x.grad, norm.weight.grad, norm.bias.grad], type(y.grad_fn).__name__


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(16, 4, 28, 28), (33, 9, 14, 14), (3, 1, 3, 3), (5, 24, 7, 7)])
def test_batch_norm_matches_torch_and_keeps_its_running_stats(dtype: torch.dtype,
                                                             shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    reference = nn.BatchNorm2d(shape[1])
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.uniform_(-1.0, 1.0)
    norm = BatchNorm2d(shape[1])
    norm.load_state_dict(reference.state_dict())
    # Far from zero mean: a one-pass variance would lose digits here.
    x = (torch.randn(shape) * 3 + 50).to(dtype).contiguous(memory_format=CHANNELS_LAST)
    upstream = torch.randn(shape).to(dtype).contiguous(memory_format=CHANNELS_LAST)

    for _ in range(2):  # the second step checks the running stats' update from the first
        y, grads, node = _norm_and_grads(norm, x, upstream)
        y_ref, grads_ref, _ = _norm_and_grads(reference, x, upstream)
        norm.zero_grad()
        reference.zero_grad()

    assert node == "_BatchNormFunctionBackward"
    assert y.dtype == dtype and y.is_contiguous(memory_format=CHANNELS_LAST)
    assert grads[0].dtype == dtype and grads[0].is_contiguous(memory_format=CHANNELS_LAST)
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2  # bf16: one or two of its ulps
    for value, expected in zip([y, *grads], [y_ref, *grads_ref], strict=True):
        scale = max(1.0, expected.float().abs().max().item())
        assert torch.allclose(value.float(), expected.float(), rtol=tolerance,
                              atol=tolerance * scale)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.allclose(getattr(norm, name).float(), getattr(reference, name).float(),
                              rtol=1e-5, atol=1e-5), name


@pytest.mark.parametrize("case", ["16 channels", "NCHW", "eval", "no grad"])
def test_batch_norm_falls_back_to_torch_outside_its_rule(case: str) -> None:
    channels = 16 if case == "16 channels" else 6
    norm, reference = BatchNorm2d(channels), nn.BatchNorm2d(channels)
    x = torch.randn(4, channels, 6, 6)
    if case != "NCHW":
        x = x.contiguous(memory_format=CHANNELS_LAST)
    outputs = []
    for layer in (norm, reference):
        layer.train(case != "eval")
        with torch.set_grad_enabled(case != "no grad"):
            outputs.append(layer(x.clone().requires_grad_(case != "no grad")))
    expected_node = "NoneType" if case == "no grad" else "NativeBatchNormBackward0"
    assert type(outputs[0].grad_fn).__name__ == expected_node
    assert torch.equal(outputs[0], outputs[1])


def test_batch_norm_of_one_value_per_channel_raises_torchs_error() -> None:
    x = torch.randn(1, 6, 1, 1).contiguous(memory_format=CHANNELS_LAST).requires_grad_()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchNorm2d(6)(x)


@pytest.mark.parametrize("stride", [2, 3])
def test_subsampled_conv_is_the_strided_conv_and_trains_channels_last(stride: int) -> None:
    """Including the shape whose strided channels_last backward corrupts torch's heap."""
    torch.manual_seed(0)
    conv = SubsampledConv2d(9, 18, stride=stride, bias=True)
    reference = nn.Conv2d(9, 18, 1, stride=stride)
    reference.load_state_dict(conv.state_dict())
    x = torch.randn(33, 9, 14, 14)
    x_channels_last = x.contiguous(memory_format=CHANNELS_LAST).requires_grad_()
    y = conv.to(memory_format=CHANNELS_LAST)(x_channels_last)
    y.sum().backward()
    x_plain = x.clone().requires_grad_()
    y_ref = reference(x_plain)  # NCHW: torch's safe path
    y_ref.sum().backward()
    assert y.shape == y_ref.shape and torch.allclose(y, y_ref, atol=1e-5)
    assert x_channels_last.grad is not None and x_plain.grad is not None
    assert torch.allclose(x_channels_last.grad, x_plain.grad, atol=1e-5)
    assert x_channels_last.grad.is_contiguous(memory_format=CHANNELS_LAST)
    with pytest.raises(ValueError, match="1x1 conv"):
        SubsampledConv2d(9, 18, kernel_size=3)


def test_the_zoo_resnet_trains_channels_last_with_torchs_parameters_and_flops() -> None:
    """Its downsample is a SubsampledConv2d: channels_last, the same keys, params and FLOPs."""
    from mlscale.measure import measure_model

    model = models.get_model("resnet_mini", width=0.25, depth=1)
    assert channels_last_is_safe(model)
    assert any(isinstance(m, SubsampledConv2d) for m in model.modules())
    assert any(isinstance(m, BatchNorm2d) for m in model.modules())
    assert "features.2.downsample.0.weight" in model.state_dict()
    plain = copy.deepcopy(model)
    for module in plain.modules():  # back to torch's layers: a strided conv, torch's norm
        if isinstance(module, SubsampledConv2d):
            module.__class__ = nn.Conv2d
        elif isinstance(module, BatchNorm2d):
            module.__class__ = nn.BatchNorm2d
    assert not channels_last_is_safe(plain)
    assert measure_model(model, (1, 28, 28)) == measure_model(plain, (1, 28, 28))
    x = torch.randn(8, 1, 28, 28)
    labels = torch.randint(0, 10, (8,))
    fast = F.cross_entropy(model.to(memory_format=CHANNELS_LAST)(
        x.contiguous(memory_format=CHANNELS_LAST)), labels)
    fast.backward()
    reference = F.cross_entropy(plain(x), labels)
    assert torch.allclose(fast, reference, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_conv_under_bf16_autocast_gives_torchs_result(stride: int) -> None:
    """Strided: computed in fp32 (torch's bf16 backward is slow there), returned in bf16."""
    torch.manual_seed(0)
    conv = DepthwiseConv2d(12, 12, 3, stride=stride, padding=1, groups=12, bias=False)
    reference = nn.Conv2d(12, 12, 3, stride=stride, padding=1, groups=12, bias=False)
    reference.load_state_dict(conv.state_dict())
    x = _bf16_batch((8, 12, 14, 14))
    outputs, grads = [], []
    for layer in (conv, reference):
        inputs = x.detach().clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(inputs)
        y.float().square().sum().backward()
        assert inputs.grad is not None and layer.weight.grad is not None
        outputs.append(y)
        grads += [inputs.grad, layer.weight.grad]
    assert outputs[0].dtype == outputs[1].dtype == torch.bfloat16
    assert outputs[0].is_contiguous(memory_format=CHANNELS_LAST)
    for value, expected in [(outputs[0], outputs[1]), (grads[0], grads[2]), (grads[1], grads[3])]:
        scale = expected.float().abs().max().item()
        assert torch.allclose(value.float(), expected.float(), rtol=2e-2, atol=2e-2 * scale)
    if stride == 1:  # outside the rule: torch's own bf16 conv, bit for bit
        assert torch.equal(outputs[0], outputs[1])


def test_conv_bn_act_has_torchvisions_layers_and_names() -> None:
    from torchvision.ops import Conv2dNormActivation

    ours = ConvBnAct(4, 8, 3, stride=2, activation_layer=nn.SiLU, conv_layer=DepthwiseConv2d)
    theirs = Conv2dNormActivation(4, 8, 3, stride=2, activation_layer=nn.SiLU)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert [type(m).__name__ for m in ours] == ["DepthwiseConv2d", "BatchNorm2d", "SiLU"]
    assert isinstance(ours[1], BatchNorm2d) and ours[0].padding == theirs[0].padding


@pytest.mark.parametrize("memory_format", [CHANNELS_LAST, torch.contiguous_format])
def test_global_pool_is_torchs_pool_with_the_gradient_in_the_inputs_layout(
        memory_format: torch.memory_format) -> None:
    x = torch.randn(5, 6, 7, 9).contiguous(memory_format=memory_format)
    upstream = torch.randn(5, 6, 1, 1)
    ours, ours_grad, ours_fn = _pool_and_grad(GlobalAvgPool2d().train(), x, upstream)
    theirs, theirs_grad, _ = _pool_and_grad(nn.AdaptiveAvgPool2d(1), x, upstream)
    assert ours_fn == "_GlobalMeanBackward"
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert torch.allclose(ours_grad, theirs_grad, atol=1e-7)
    assert ours_grad.is_contiguous(memory_format=memory_format)
    with torch.no_grad():  # no graph (evaluation, export): torch's own pool
        assert GlobalAvgPool2d()(x).grad_fn is None
        assert torch.equal(GlobalAvgPool2d()(x), nn.AdaptiveAvgPool2d(1)(x))


def test_concatenation_is_torchs_with_each_gradient_in_its_maps_layout() -> None:
    maps = [torch.randn(3, channels, 5, 5).contiguous(memory_format=CHANNELS_LAST)
            for channels in (4, 1, 6)]
    maps.append(torch.randn(3, 2, 5, 5))  # an NCHW map keeps NCHW
    upstream = torch.randn(3, 13, 5, 5).contiguous(memory_format=CHANNELS_LAST)
    results = []
    for concatenate in (lambda ms: concat_channels(ms, training=True),
                        lambda ms: torch.cat(ms, dim=1)):
        inputs = [m.clone().requires_grad_() for m in maps]
        y = concatenate(inputs)
        y.backward(upstream)
        results.append((y, [m.grad for m in inputs]))
    (ours, our_grads), (theirs, their_grads) = results
    assert torch.equal(ours, theirs)
    for grad, expected, source in zip(our_grads, their_grads, maps, strict=True):
        assert grad is not None and expected is not None and torch.equal(grad, expected)
        layout = CHANNELS_LAST if source.shape[1] > 1 and source.stride(1) == 1 else None
        if layout is not None:
            assert grad.is_contiguous(memory_format=layout)
        else:
            assert grad.is_contiguous()


@pytest.mark.parametrize("family", ["lenet5", "alexnet_mini", "vgg_mini", "inception_mini",
                                    "resnet_mini", "efficientnet_mini"])
def test_every_gradient_reaches_its_layer_in_the_activations_layout(family: str) -> None:
    """A gradient in another layout than its activation sends torch's backward kernels
    through slow strided loops (pooling, concatenation and subsampling returned NCHW or
    strided gradients for channels_last maps)."""
    torch.manual_seed(0)
    model = models.get_model(family, width=0.25 if family != "lenet5" else 0.5)
    assert channels_last_is_safe(model)
    model = model.to(memory_format=CHANNELS_LAST).train()
    mismatched: list[str] = []

    def watch(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            if (isinstance(output, torch.Tensor) and output.dim() == 4 and output.requires_grad
                    and output.shape[2] * output.shape[3] > 1 and output.shape[1] > 1
                    and output.is_contiguous(memory_format=CHANNELS_LAST)
                    and not isinstance(module, nn.Sequential | nn.Flatten)):
                def check(grad: torch.Tensor) -> None:
                    if not grad.is_contiguous(memory_format=CHANNELS_LAST):
                        mismatched.append(f"{name} ({type(module).__name__})")
                output.register_hook(check)
        return hook

    for name, module in model.named_modules():
        module.register_forward_hook(watch(name))
    x = torch.randn(4, 1, 28, 28).contiguous(memory_format=CHANNELS_LAST)
    F.cross_entropy(model(x), torch.randint(0, 10, (4,))).backward()
    feeds_the_flatten = {"lenet5": "features.5", "alexnet_mini": "avgpool",
                         "vgg_mini": "features.8"}  # flattened for the linear head: NCHW order
    assert [m for m in mismatched if not m.startswith(f"{feeds_the_flatten.get(family)} ")] == []
