"""Faster CPU training for layers with few channels, where torch's kernels are slow.

torch's channels_last CPU kernels vectorise over channels, 16 at a time. Measured on this
project's CPU (AVX-512 with BF16, batch 256; a LeNet-5 step took 6.6 ms before these):

- max-pooling a map whose channels are not a multiple of 16 runs a scalar loop: for
  LeNet-5's 6x28x28 map in bf16, 2.3 ms forward and 0.4 ms backward. ``MaxPool2x2``
  trains through mlscale's own kernel (``csrc/max_pool2x2.cpp``, loops along whole image
  rows): 0.26 ms forward and 0.13 ms backward, with torch's maxima and winners
  (so its gradients). Where that kernel cannot be built, torch's pool is used.
- oneDNN computes the input gradient of a bf16 convolution with fewer than 16 input
  channels as fast or faster from NCHW tensors: 0.67 vs 1.22 ms for LeNet-5's second
  conv (6 channels in), both layout conversions included; about even for 3 and 12.
  ``Conv2d`` takes that one product in NCHW. (From 16 channels on it depends on the
  shape: slower for 24 and 32, faster for 40.)

- batch norm over a channels_last map whose channels are not a multiple of 16 runs
  scalar loops too (fp32 with 4 channels at 28x28, batch 256: 10.5 ms forward and 7.5 ms
  backward; 6 channels 10.6 and 20.4). ``BatchNorm2d`` trains through mlscale's kernels
  (``csrc/batch_norm_nhwc.cpp``, flat blocks of lcm(C, 16) values): 1.6 and 2.2 ms for
  4 channels, 1.7 and 2.3 for 6, fp32 or bf16; from 16 channels on torch's kernel is as
  fast and is used. Thin BatchNorm families train 1.3-1.8x faster per step for it.
- a strided 1x1 conv cannot train in channels_last (torch 2.14.1 corrupts the heap), so
  ResNet's downsample is ``SubsampledConv2d``: a subsample, then an unstrided 1x1 conv.
- a gradient that reaches a layer in another layout than its activation (torch returns
  NCHW gradients from slicing and global pooling of channels_last maps, and strided
  channel slices from concatenation) sends that layer's backward kernels through slow
  strided loops: a ReLU backward over 8x14x14 maps took 0.94 ms against 0.07.
  ``SubsampledConv2d``, ``GlobalAvgPool2d`` and ``concat_channels`` hand gradients back in
  the activation's layout: steps up to 1.13x faster (benchmarks/gradient_layout.py).

torch.compile, the library way to generate such kernels, was slower end to end here and
took 20 s to compile. Every layer here is a drop-in ``nn`` subclass: the same parameters
and outputs, and torch's own kernels for evaluation, export, other devices and shapes
outside those rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_input
from torchvision.ops.misc import ConvNormActivation

from mlscale.models._native import native_kernels

__all__ = [
    "BatchNorm2d", "Conv2d", "ConvBnAct", "DepthwiseConv2d", "GlobalAvgPool2d", "MaxPool2x2",
    "SubsampledConv2d", "concat_channels",
]

_VECTOR_CHANNELS = 16  # channels per vector in torch's channels_last CPU kernels


def _channels_last_cpu_training(x: torch.Tensor) -> bool:
    """Whether ``x`` is a 4-d channels_last CPU batch in a step that builds a graph."""
    return (
        x.dim() == 4
        and x.device.type == "cpu"
        and x.is_contiguous(memory_format=torch.channels_last)
        and torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
    )


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)``, trained through mlscale's CPU kernel where that is faster."""

    def __init__(self) -> None:
        super().__init__(kernel_size=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training and x.dtype in (torch.bfloat16, torch.float32)
                and _channels_last_cpu_training(x) and x.shape[1] % _VECTOR_CHANNELS != 0
                and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0 and native_kernels()):
            pooled: torch.Tensor = _MaxPool2x2Function.apply(x)
            return pooled
        return F.max_pool2d(x, 2)


class _MaxPool2x2Function(torch.autograd.Function):
    """2x2, stride-2 max-pool by ``torch.ops.mlscale``; backward from the saved winners."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        pooled, winner = torch.ops.mlscale.max_pool2x2_forward(x)
        ctx.save_for_backward(winner)
        return pooled

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> torch.Tensor:
        (winner,) = ctx.saved_tensors
        return torch.ops.mlscale.max_pool2x2_backward(grads[0], winner)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` whose input gradient is computed in NCHW where that is faster."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training and x.requires_grad and self.in_channels < _VECTOR_CHANNELS
                and self.padding_mode == "zeros" and isinstance(self.padding, tuple)
                and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16
                and x.dtype == torch.bfloat16 and _channels_last_cpu_training(x)):
            bias = None if self.bias is None else self.bias.to(x.dtype)
            result: torch.Tensor = _Conv2dFunction.apply(
                x, self.weight.to(x.dtype), bias, self.stride, self.padding, self.dilation,
                self.groups)
            return result
        return super().forward(x)


class _Conv2dFunction(torch.autograd.Function):
    """F.conv2d; backward takes the input gradient from NCHW tensors, the rest as torch does."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor,
                weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, ...],
                padding: tuple[int, ...], dilation: tuple[int, ...],
                groups: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any,
                 *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        grad = grads[0]
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = conv2d_input(
                x.shape, weight.contiguous(), grad.contiguous(), stride, padding, dilation, groups
            ).contiguous(memory_format=torch.channels_last)
        bias_sizes = [weight.shape[0]] if ctx.has_bias else None
        _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad, x, weight, bias_sizes, stride, padding, dilation, False, [0, 0], groups,
            (False, True, ctx.has_bias),
        )
        return grad_x, grad_weight, grad_bias, None, None, None, None


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d``, trained through mlscale's channels_last CPU kernels where faster."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One value per channel has no variance: torch's layer raises its error for it.
        if (self.training and x.dtype in (torch.bfloat16, torch.float32)
                and x.shape[1] % _VECTOR_CHANNELS != 0 and x.numel() > x.shape[1]
                and _channels_last_cpu_training(x) and native_kernels()):
            return self._native_forward(x)
        return super().forward(x)

    def _native_forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight if self.weight is not None else torch.ones(x.shape[1])
        bias = self.bias if self.bias is not None else torch.zeros(x.shape[1])
        normalized, mean, var = _BatchNormFunction.apply(x, weight, bias, self.eps)
        if self.track_running_stats:
            assert self.num_batches_tracked is not None
            self.num_batches_tracked.add_(1)
            factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                      else self.momentum)
            count = x.numel() // x.shape[1]
            with torch.no_grad():
                self.running_mean.lerp_(mean, factor)  # type: ignore[union-attr]
                self.running_var.lerp_(var * count / max(count - 1, 1), factor)  # type: ignore[union-attr]
        result: torch.Tensor = normalized
        return result


class _BatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm by ``torch.ops.mlscale``: returns (y, batch mean, batch var)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, var = torch.ops.mlscale.batch_norm_nhwc_stats(x)
        invstd = torch.rsqrt(var + eps)
        scale = weight.detach().float() * invstd
        y = torch.ops.mlscale.batch_norm_nhwc_affine(x, scale, bias.detach().float() - mean * scale)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        grad = grads[0].contiguous(memory_format=torch.channels_last).to(x.dtype)
        sum_dy, sum_dy_xc = torch.ops.mlscale.batch_norm_nhwc_grad_sums(grad, x, mean)
        count = x.numel() // x.shape[1]
        grad_weight = sum_dy_xc * invstd
        grad_x = None
        if ctx.needs_input_grad[0]:
            # dx = w * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)), xhat = (x - mean) * invstd
            dy_scale = weight.detach().float() * invstd
            x_scale = -dy_scale * invstd * invstd * sum_dy_xc / count
            shift = -dy_scale * sum_dy / count - x_scale * mean
            grad_x = torch.ops.mlscale.batch_norm_nhwc_affine2(grad, dy_scale, x, x_scale, shift)
        return (grad_x, grad_weight.to(weight.dtype), sum_dy.to(weight.dtype), None)


class ConvBnAct(ConvNormActivation):
    """torchvision's conv + norm + activation block with ``BatchNorm2d`` and any conv layer.

    Its layers and parameter names are ``Conv2dNormActivation``'s (0: conv, 1: norm,
    2: activation); ``conv_layer`` picks the conv class (``nn.Conv2d`` by default).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 conv_layer: Callable[..., nn.Module] = nn.Conv2d, **kwargs: Any) -> None:
        super().__init__(in_channels, out_channels, kernel_size, norm_layer=BatchNorm2d,
                         conv_layer=conv_layer, **kwargs)


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise ``nn.Conv2d`` whose strided training under CPU bf16 autocast runs in fp32.

    oneDNN's bf16 backward of a strided depthwise conv is 7-26x slower than its fp32 one
    (48 channels, 28x28 to 14x14, batch 256: 156 ms against 21; 72 channels at 14x14:
    160 against 6), which made bf16 EfficientNet training slower than fp32.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training and self.stride != (1, 1) and x.device.type == "cpu"
                and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16):
            with torch.autocast("cpu", enabled=False):
                bias = None if self.bias is None else self.bias.float()
                return self._conv_forward(x.float(), self.weight.float(), bias).to(torch.bfloat16)
        return super().forward(x)


class SubsampledConv2d(nn.Conv2d):
    """A strided 1x1 ``nn.Conv2d`` computed as a subsample and an unstrided 1x1 conv.

    The same parameters, result and FLOPs; it exists because torch 2.14.1's channels_last
    CPU backward of a strided 1x1 conv corrupts the heap for some shapes (9 channels,
    batch 33, 14x14 aborts the process), and without it ResNet had to train in NCHW,
    where oneDNN's backward of its thin 3x3 convs is 4x slower (4 channels at 28x28:
    23 ms against 5 ms). Without a backward pass (evaluation, ONNX export) it is torch's
    strided conv, so an exported ResNet has the usual graph.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1,
                 stride: int = 1, padding: int | None = 0, **kwargs: Any) -> None:
        if kernel_size != 1 or padding not in (0, None):
            raise ValueError("SubsampledConv2d is a 1x1 conv without padding")
        super().__init__(in_channels, out_channels, 1, stride=stride, padding=0, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(x)
        subsampled: torch.Tensor = _Subsample.apply(x, self.stride)
        return F.conv2d(subsampled, self.weight, self.bias,
                        dilation=self.dilation, groups=self.groups)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last for a channels_last 4-d map, else contiguous."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class _Subsample(torch.autograd.Function):
    """``x[:, :, ::rows, ::columns]`` whose gradient keeps ``x``'s layout.

    torch's slice backward returns an NCHW gradient for a channels_last ``x``; summed into
    the block's other gradient, it sent a whole ResNet block's backward through torch's
    slow mixed-layout loops.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
        ctx.shape, ctx.stride, ctx.memory_format = x.shape, stride, _memory_format(x)
        rows, columns = stride
        return x[:, :, ::rows, ::columns]

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor, None]:
        rows, columns = ctx.stride
        grad_x = torch.empty(ctx.shape, dtype=grads[0].dtype, device=grads[0].device,
                             memory_format=ctx.memory_format).zero_()
        grad_x[:, :, ::rows, ::columns] = grads[0]
        return grad_x, None


class GlobalAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d(1)`` whose gradient keeps the input's layout in training.

    torch's backward of the pool returns an NCHW gradient for a channels_last map, and
    every backward kernel of the block before it then ran torch's mixed-layout loops.
    Outside training it is torch's pool (so an exported graph has GlobalAveragePool).
    """

    def __init__(self) -> None:
        super().__init__(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.dim() == 4 and torch.is_grad_enabled() and x.requires_grad:
            pooled: torch.Tensor = _GlobalMean.apply(x)
            return pooled
        return super().forward(x)


class _GlobalMean(torch.autograd.Function):
    """The mean over height and width, kept as 1x1; its gradient in the input's layout."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.shape, ctx.memory_format = x.shape, _memory_format(x)
        return x.mean((2, 3), keepdim=True)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> torch.Tensor:
        height, width = ctx.shape[2:]
        spread = (grads[0] / (height * width)).expand(ctx.shape)
        return spread.contiguous(memory_format=ctx.memory_format)


def concat_channels(maps: list[torch.Tensor], training: bool) -> torch.Tensor:
    """``torch.cat(maps, dim=1)`` whose gradients come back in each map's own layout.

    torch hands each map a channel slice of the concatenated gradient, which for
    channels_last maps is strided, and the branches' backward kernels then ran torch's
    slow strided loops. Only in ``training``: evaluation and export get torch's op.
    """
    if training and torch.is_grad_enabled() and any(m.requires_grad for m in maps):
        concatenated: torch.Tensor = _ConcatChannels.apply(*maps)
        return concatenated
    return torch.cat(maps, dim=1)


class _ConcatChannels(torch.autograd.Function):
    """Concatenation along the channels; each gradient contiguous in its map's layout."""

    @staticmethod
    def forward(ctx: Any, *maps: torch.Tensor) -> torch.Tensor:
        ctx.channels = [m.shape[1] for m in maps]
        ctx.memory_formats = [_memory_format(m) for m in maps]
        return torch.cat(maps, dim=1)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        parts = zip(grads[0].split(ctx.channels, dim=1), ctx.memory_formats,
                    ctx.needs_input_grad, strict=True)
        return tuple(part.contiguous(memory_format=memory_format) if needed else None
                     for part, memory_format, needed in parts)
