"""Faster bf16 CPU training for layers with few channels, where torch's kernels are slow.

torch's channels_last CPU kernels vectorise over channels, 16 at a time. Measured on this
project's CPU (AVX-512 with BF16, batch 256; one LeNet-5 step is about 6 ms):

- max-pooling a map whose channels are not a multiple of 16 runs a scalar loop: for
  LeNet-5's 6x28x28 map, 2.3 ms forward and 0.4 ms backward with the ReLU. ``MaxPool2x2``
  takes 0.7 ms, built from vectorised tensor ops. Gains measured for 3, 6, 12 and 20
  channels.
- oneDNN computes the input gradient of a convolution with fewer than 16 input channels
  as fast or faster from NCHW tensors: 0.67 vs 1.22 ms for LeNet-5's second conv (6
  channels in), including both layout conversions; even for 3 and 12. ``Conv2d`` takes
  that one product in NCHW. (From 16 channels on it depends on the shape: slower for 24
  and 32, faster for 40, so only below 16.)

No library ships either; torch.compile's generated kernels were slower end to end here
and take 20 s to compile. Both are drop-in ``nn`` subclasses: the same parameters, the
same outputs, and torch's own kernels for evaluation, export, fp32, other devices and
channel counts outside those rules.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_input

__all__ = ["Conv2d", "MaxPool2x2"]

_VECTOR_CHANNELS = 16  # channels per vector in torch's channels_last CPU kernels


def _bf16_channels_last_training(x: torch.Tensor) -> bool:
    """Whether ``x`` is a 4-d bf16 channels_last CPU batch in a step that builds a graph."""
    return (
        x.dim() == 4
        and x.device.type == "cpu"
        and x.dtype == torch.bfloat16
        and x.is_contiguous(memory_format=torch.channels_last)
        and torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
    )


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)``, trained through ``_MaxPool2x2Function`` where that is faster."""

    def __init__(self) -> None:
        super().__init__(kernel_size=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training and x.dim() == 4 and x.shape[1] % _VECTOR_CHANNELS != 0
                and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0
                and _bf16_channels_last_training(x)):
            pooled: torch.Tensor = _MaxPool2x2Function.apply(x)
            return pooled
        return F.max_pool2d(x, 2)


class _MaxPool2x2Function(torch.autograd.Function):
    """2x2, stride-2 max-pool of an NCHW batch stored channels_last (NHWC in memory).

    1. Row pairs are long contiguous runs in NHWC: the column maxima, and which row won.
    2. Column pairs, de-interleaved into two contiguous halves first (bf16 arithmetic on
       strided 6-element runs is several times slower than the copy): the maxima, and
       which column won.
    3. Backward routes each gradient to the winner with 0/1 indicators, as ``g * w`` and
       ``g - g * w``, exact in any float format.

    Outputs equal torch's bit for bit; so do gradients unless a window holds its maximum
    twice, where torch picks the first in row-major order and this the first in
    column-major order (both valid subgradients).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(n, h // 2, 2, w * c)  # a view
        top, bottom = rows[:, :, 0], rows[:, :, 1]
        column_max = torch.maximum(top, bottom)
        bottom_wins = torch.sub(column_max, top).sign_()  # 1 where bottom > top, else 0
        left, right = column_max.view(n, h // 2, w // 2, 2, c).movedim(3, 0).contiguous()
        pooled = torch.empty((n, c, h // 2, w // 2), dtype=x.dtype,
                             memory_format=torch.channels_last)
        pooled_nhwc = torch.maximum(left, right, out=pooled.permute(0, 2, 3, 1))
        right_wins = torch.sub(pooled_nhwc, left).sign_()
        ctx.save_for_backward(bottom_wins, right_wins)
        return pooled

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> torch.Tensor:
        bottom_wins, right_wins = ctx.saved_tensors
        n, out_h, out_w, c = right_wins.shape
        grad = grads[0].permute(0, 2, 3, 1)
        to_right = grad * right_wins
        to_columns = torch.stack([grad - to_right, to_right], dim=3).view(n, out_h, -1)
        to_rows = to_columns.new_empty((n, out_h, 2, to_columns.shape[-1]))
        to_bottom = torch.mul(to_columns, bottom_wins, out=to_rows[:, :, 1])
        torch.sub(to_columns, to_bottom, out=to_rows[:, :, 0])
        return to_rows.view(n, 2 * out_h, 2 * out_w, c).permute(0, 3, 1, 2)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` whose input gradient is computed in NCHW where that is faster."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training and x.requires_grad and self.in_channels < _VECTOR_CHANNELS
                and self.padding_mode == "zeros" and isinstance(self.padding, tuple)
                and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16
                and _bf16_channels_last_training(x)):
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
