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

torch.compile, the library way to generate such kernels, was slower end to end here and
took 20 s to compile. Both layers are drop-in ``nn`` subclasses: the same parameters and
outputs, and torch's own kernels for evaluation, export, other devices and shapes outside
those rules.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_input

from mlscale.models._native import native_kernels

__all__ = ["Conv2d", "MaxPool2x2"]

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
