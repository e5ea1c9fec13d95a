"""What a model costs: trainable parameters and FLOPs per sample.

FLOPs follow ``torch.utils.flop_counter.FlopCounterMode``: FLOPs = 2 x MACs, counted
for matmuls and convolutions (bias adds, activations, pooling and norms are not
counted). Training FLOPs are forward + cross-entropy + backward, measured the same way,
except that convolution backward uses a groups-aware formula (see ``_conv_backward_flop``).

>>> from mlscale.models import get_model
>>> measure_model(get_model("lenet5"), (1, 28, 28))
ModelCost(params=61706, flops_per_sample=833040, train_flops_per_sample=2263920)
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mlscale.errors import MlscaleError, first_line

__all__ = ["ModelCost", "cost_of", "count_params", "forward_flops", "measure_model",
           "train_flops"]

_BATCH = 2  # samples per measured pass; batch norm needs more than one in train mode


@dataclass(frozen=True)
class ModelCost:
    """Parameters and per-sample forward and training (forward + backward) FLOPs."""

    params: int
    flops_per_sample: int
    train_flops_per_sample: int


def count_params(model: nn.Module) -> int:
    """The number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def forward_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Forward FLOPs per sample of ``input_shape`` (C, H, W), in eval mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _flop_counter() as counter:
            model(_batch(model, input_shape))
    finally:
        model.train(was_training)
    return _per_sample(counter.get_total_flops())


def train_flops(model: nn.Module, input_shape: tuple[int, int, int], num_classes: int = 10) -> int:
    """Forward + cross-entropy + backward FLOPs per sample, in train mode.

    Runs on a copy, so the model's parameters, gradients and batch-norm statistics
    are left as they were.
    """
    return _train_flops_in_place(copy.deepcopy(model), input_shape, num_classes)


def _train_flops_in_place(model: nn.Module, input_shape: tuple[int, int, int],
                          num_classes: int) -> int:
    """``train_flops`` on ``model`` itself: a throwaway model needs no copy."""
    model.train()
    inputs = _batch(model, input_shape)
    targets = torch.arange(_BATCH, device=inputs.device) % num_classes
    with _flop_counter() as counter:
        F.cross_entropy(model(inputs), targets).backward()
    return _per_sample(counter.get_total_flops())


def measure_model(
    model: nn.Module, input_shape: tuple[int, int, int], num_classes: int = 10
) -> ModelCost:
    """Parameters, forward FLOPs and training FLOPs per sample, in one object."""
    return ModelCost(
        params=count_params(model),
        flops_per_sample=forward_flops(model, input_shape),
        train_flops_per_sample=train_flops(model, input_shape, num_classes),
    )


@functools.lru_cache(maxsize=1024)
def cost_of(arch: str, width: float | None, depth: int | None,
            input_shape: tuple[int, int, int], num_classes: int) -> ModelCost:
    """The cost of family ``arch`` at its dials, built for ``input_shape`` and ``num_classes``,
    measured once per process (the search's pricing, the trainer's budget check and the
    pre-run check of a user's family all ask for the same models).

    Built on the meta device, then given uninitialised CPU memory: a cost depends on
    shapes only. Skipping the initialisation and the copy ``train_flops`` makes took the
    six families' budget dial grids (374 models) from 162 s to 61 s here; measuring on
    the meta device itself is slower still (its batch-norm kernels are Python code).
    """
    from mlscale.models import get_model

    with torch.device("meta"):
        model = get_model(arch, width=width, depth=depth, in_channels=input_shape[0],
                          num_classes=num_classes, image_size=input_shape[1])
    _check_trainable_here(model, f"family {arch} at width={width}, depth={depth}")
    model = model.to_empty(device="cpu")
    try:
        return ModelCost(
            params=count_params(model), flops_per_sample=forward_flops(model, input_shape),
            train_flops_per_sample=_train_flops_in_place(model, input_shape, num_classes))
    except Exception as error:  # a user's family that fails only in train mode or backward
        raise MlscaleError(f"family {arch}: a training step failed at width={width}, "
                           f"depth={depth}: {type(error).__name__}: {first_line(error)}"
                           ) from None


def _check_trainable_here(model: nn.Module, what: str) -> None:
    """A one-line error for a model whose weights, gradients and AdamW's two moments
    (four fp32 copies) would not fit in this machine's available memory: a user family
    with open dial ranges accepts any width, and allocating one too large thrashes."""
    from mlscale.latency import available_memory

    need, available = 16 * count_params(model), available_memory()
    if available is not None and need > available:
        raise MlscaleError(f"{what}: {count_params(model):,} parameters need "
                           f"{need / 2**30:.1f} GiB to train (weights, gradients, optimizer "
                           f"state), more than the {available / 2**30:.1f} GiB available")


def _conv_backward_flop(
    grad_out_shape: Sequence[int],
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    _bias: object,
    _stride: object,
    _padding: object,
    _dilation: object,
    transposed: bool,
    _output_padding: object,
    _groups: int,
    output_mask: Sequence[bool],
    **_: object,
) -> int:
    """FLOPs of ``aten.convolution_backward``: one forward conv per gradient it computes.

    torch's own formula counts the weight gradient as if ``groups`` were 1, which
    overcounts a depthwise conv by its channel count (fix proposed in
    pytorch/pytorch#183405); for ``groups == 1`` the two agree exactly.
    """
    spatial = (x_shape if transposed else grad_out_shape)[2:]
    forward = 2 * x_shape[0] * math.prod(spatial) * math.prod(w_shape)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def _flop_counter() -> FlopCounterMode:
    return FlopCounterMode(
        display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop}
    )


def _batch(model: nn.Module, input_shape: tuple[int, int, int]) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.zeros(_BATCH, *input_shape, device=device)


def _per_sample(total: int) -> int:
    if total % _BATCH:
        raise ValueError(f"{total} FLOPs do not split evenly over a batch of {_BATCH}")
    return total // _BATCH
