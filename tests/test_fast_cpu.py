"""The bf16 CPU training paths: same outputs as torch's kernels, valid gradients, fallbacks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mlscale.models as models
from mlscale.models._fast_cpu import Conv2d, MaxPool2x2

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


@pytest.mark.parametrize("shape", [(8, 6, 28, 28), (4, 3, 10, 10), (4, 20, 6, 8), (2, 12, 2, 2)])
def test_pool_matches_torch_and_routes_each_gradient_to_one_maximum(
    shape: tuple[int, ...],
) -> None:
    x = _bf16_batch(shape)
    upstream = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2).to(torch.bfloat16)
    y, grad, node = _pool_and_grad(MaxPool2x2(), x, upstream)
    y_ref, grad_ref, _ = _pool_and_grad(nn.MaxPool2d(2), x, upstream)

    assert node == "_MaxPool2x2FunctionBackward"
    assert torch.equal(y, y_ref)
    assert y.is_contiguous(memory_format=CHANNELS_LAST)
    assert grad.is_contiguous(memory_format=CHANNELS_LAST)
    windows = x.detach().unfold(2, 2, 2).unfold(3, 2, 2).flatten(-2)  # (n, c, h/2, w/2, 4)
    tied = (windows == windows.amax(-1, keepdim=True)).sum(-1) > 1
    grad_windows = grad.unfold(2, 2, 2).unfold(3, 2, 2).flatten(-2)
    grad_ref_windows = grad_ref.unfold(2, 2, 2).unfold(3, 2, 2).flatten(-2)
    assert torch.equal(grad_windows[~tied], grad_ref_windows[~tied])
    # A tied window still sends its whole gradient to exactly one of its maxima.
    winners = (grad_windows != 0).sum(-1)
    assert torch.all(winners[tied & (upstream != 0)] == 1)
    assert torch.equal(grad_windows.sum(-1), upstream)
    is_max = windows == windows.amax(-1, keepdim=True)
    assert torch.all(is_max | (grad_windows == 0))


def test_pool_gradients_equal_torch_when_no_window_has_a_tie() -> None:
    # Small integers (exact in bf16): a random base per window plus a permutation of 0..3.
    base = torch.randint(-100, 100, (8, 6, 4, 4, 1)).float()
    offsets = torch.rand(8, 6, 4, 4, 4).argsort(-1).float()
    windows = (base + offsets).reshape(8, 6, 4, 4, 2, 2)
    values = windows.permute(0, 1, 2, 4, 3, 5).reshape(8, 6, 8, 8)
    x = values.to(torch.bfloat16).contiguous(memory_format=CHANNELS_LAST).requires_grad_()
    upstream = torch.randn(8, 6, 4, 4).to(torch.bfloat16)
    _, grad, node = _pool_and_grad(MaxPool2x2(), x, upstream)
    _, grad_ref, _ = _pool_and_grad(nn.MaxPool2d(2), x, upstream)
    assert node == "_MaxPool2x2FunctionBackward"
    assert torch.equal(grad, grad_ref)


@pytest.mark.parametrize("case", ["fp32", "nchw", "16 channels", "odd side", "eval", "no grad"])
def test_pool_falls_back_to_torch_outside_its_rule(case: str) -> None:
    shape = {"16 channels": (2, 16, 8, 8), "odd side": (2, 6, 7, 8)}.get(case, (2, 6, 8, 8))
    x = _bf16_batch(shape)
    if case == "fp32":
        x = x.detach().float().requires_grad_()
    if case == "nchw":
        x = x.detach().contiguous().requires_grad_()
    pool = MaxPool2x2()
    if case == "eval":
        pool.eval()
    with torch.set_grad_enabled(case != "no grad"):
        y = pool(x)
    assert torch.equal(y, F.max_pool2d(x, 2))
    if case != "no grad":
        assert type(y.grad_fn).__name__ == "MaxPool2DWithIndicesBackward0"


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
