"""Where and in what precision a run trains, and keeping freed memory off the OS."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlscale.errors import MlscaleError

if TYPE_CHECKING:
    import torch
    from torch import nn

from mlscale.train._config import TrainConfig


def keep_freed_memory() -> None:
    """Stop glibc from returning large freed blocks to the OS between training steps.

    By default glibc serves each tensor over 128 KiB with a fresh mmap and unmaps it on
    free, so every step page-faults its activations in again: measured here, that is
    about a quarter of LeNet-5's CPU step time. Raising the mmap and trim thresholds (what
    PyTorch's CPU tuning guide gets by preloading jemalloc or tcmalloc) keeps the blocks in
    the heap for reuse. A no-op where the C library has no ``mallopt``.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt"):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)  # glibc's largest allowed value
    libc.mallopt(m_trim_threshold, 1024 * 1024 * 1024)


def channels_last_is_safe(model: nn.Module) -> bool:
    """Whether to train ``model`` in channels_last, oneDNN's fast layout on CPU.

    Not for models with a strided 1x1 convolution: in torch 2.14.1 its channels_last
    backward corrupts the heap for some shapes (9 channels, batch 33, 14x14 crashes the
    process), so those models train in NCHW. The zoo's ResNet computes its downsample as
    ``SubsampledConv2d`` (a subsample, then an unstrided 1x1 conv) and so trains in
    channels_last.
    """
    from torch import nn

    from mlscale.models._fast_cpu import SubsampledConv2d

    return not any(isinstance(m, nn.Conv2d) and not isinstance(m, SubsampledConv2d)
                   and m.kernel_size == (1, 1) and m.stride != (1, 1)
                   for m in model.modules())


def bf16_is_native(device: torch.device) -> bool:
    """Whether the device runs bf16 in hardware (elsewhere torch emulates it, slowly)."""
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def precision_warning(config: TrainConfig) -> str | None:
    """Why the requested precision will be slow here (forced bf16 on a device without
    native bf16), or None."""
    if config.precision != "bf16" or bf16_is_native(_resolve_device(config.device)):
        return None
    return (f"bf16 is not native on {config.device}: it is emulated and trains several "
            f"times slower than fp32 (--precision auto picks fp32 here)")


def _resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` means bf16 autocast where the hardware runs it natively, else fp32."""
    if name != "auto":
        return name
    return "bf16" if bf16_is_native(device) else "fp32"


def check_device(name: str) -> None:
    """A one-line error unless device ``name`` (cpu, cuda, cuda:N) exists on this machine."""
    if not name.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise MlscaleError(f"device '{name}' (--device) requested but CUDA is not available "
                           "here; use --device cpu")
    index = name.partition(":")[2]
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise MlscaleError(f"device '{name}' (--device) does not exist: this machine has "
                           f"{count} CUDA device(s), cuda:0 to cuda:{count - 1}")


def _resolve_device(name: str) -> torch.device:
    import torch

    check_device(name)
    return torch.device(name)
