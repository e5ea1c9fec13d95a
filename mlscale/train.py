"""Fast training on whole-dataset tensors, budgeted by epochs or by training FLOPs.

The dataset stays in memory as uint8; each step gathers a batch by index and
normalises it in one vectorised op, so no per-sample Python runs in the loop.

>>> result = train(TrainConfig(arch="lenet5", epochs=1, train_size=1000))  # doctest: +SKIP
>>> round(result.test_accuracy, 2)                                       # doctest: +SKIP
0.9
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from mlscale.errors import MlscaleError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from mlscale.data import Splits
    from mlscale.measure import ModelCost

__all__ = ["EpochMetrics", "Progress", "TrainConfig", "TrainResult", "bf16_is_native",
           "precision_warning", "train"]

EVAL_BATCH = 1000
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved beside every result."""

    arch: str = "lenet5"
    width: float | None = None  # None: the family's default dial
    depth: int | None = None
    dataset: str = "mnist"
    train_size: int | None = None  # None: the whole train split left after validation
    val_size: int | None = None  # None: default_val_size (5000, less for small datasets)
    epochs: int | None = None  # exactly one of epochs / max_train_flops; neither: 3 epochs
    max_train_flops: float | None = None
    batch_size: int | None = None  # None: 256, less for small subsets (see auto_batch_size)
    lr: float | None = None  # None: the family's default (ModelSpec.lr)
    weight_decay: float | None = None  # None: the family's default (ModelSpec.weight_decay)
    seed: int = 0
    device: str = "cpu"
    precision: str = "auto"  # fp32, bf16 (autocast; weights stay fp32) or auto: bf16 where native
    evaluations: int | None = None  # validations spread evenly over the run; None: every pass
    data_root: str | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build a config, rejecting unknown keys (as nanoGPT's configurator does)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MlscaleError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**values)

    def with_family_defaults(self) -> TrainConfig:
        """This config with the family's learning rate and weight decay where it sets none
        (what a run records and trains with)."""
        from mlscale.models import model_spec

        spec = model_spec(self.arch)
        return replace(self, lr=spec.lr if self.lr is None else self.lr,
                       weight_decay=spec.weight_decay if self.weight_decay is None
                       else self.weight_decay)

    def validate(self) -> None:
        """Raise MlscaleError on the first impossible value."""
        if self.epochs is not None and self.max_train_flops is not None:
            raise MlscaleError("give either epochs or max_train_flops, not both")
        if self.epochs is not None and self.epochs < 1:
            raise MlscaleError(f"epochs must be >= 1, got {self.epochs}")
        if self.max_train_flops is not None and not (
            math.isfinite(self.max_train_flops) and self.max_train_flops > 0
        ):
            raise MlscaleError(
                f"max_train_flops must be a positive number, got {self.max_train_flops}"
            )
        from mlscale.models import check_dials

        check_dials(self.arch, self.width, self.depth)  # before any data is read
        self._check_sizes()
        if self.evaluations is not None and self.evaluations < 1:
            raise MlscaleError(f"evaluations must be >= 1, got {self.evaluations}")
        if self.batch_size is not None and self.batch_size < 1:
            raise MlscaleError(f"batch size must be >= 1, got {self.batch_size}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise MlscaleError(f"learning rate must be positive, got {self.lr}")
        if self.weight_decay is not None and not (
            math.isfinite(self.weight_decay) and self.weight_decay >= 0
        ):
            raise MlscaleError(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise MlscaleError(f"device must be cpu or cuda, got '{self.device}'")
        if self.precision not in PRECISIONS:
            raise MlscaleError(
                f"precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'"
            )

    def _check_sizes(self) -> None:
        """Validation and training sizes against the dataset's train split (unloaded)."""
        from mlscale.data import default_val_size, split_sizes

        total = split_sizes(self.dataset).train
        val_size = default_val_size(total) if self.val_size is None else self.val_size
        if not 1 <= val_size < total:
            raise MlscaleError(f"validation size must be in [1, {total - 1}] ({self.dataset}'s "
                               f"train split has {total} samples), got {val_size}")
        available = total - val_size
        if self.train_size is not None and not 1 <= self.train_size <= available:
            raise MlscaleError(
                f"train size must be in [1, {available}] (the train split less {val_size} "
                f"validation samples), got {self.train_size}")


@dataclass(frozen=True)
class EpochMetrics:
    """Validation metrics after a pass over the training subset (or at an evaluation point)."""

    epoch: float
    samples_seen: int
    val_loss: float
    val_accuracy: float
    train_seconds: float  # time in training steps so far (no evaluation, no set-up)


@dataclass(frozen=True)
class Progress:
    """A snapshot handed to the progress callback during training."""

    step: int
    total_steps: int
    epoch: float
    train_loss: float
    last_val: EpochMetrics | None


@dataclass
class TrainResult:
    """The outcome of one run; ``to_dict`` gives its JSON form (without the model)."""

    config: TrainConfig
    run_name: str
    width: float
    depth: int
    precision: str  # what "auto" resolved to
    batch_size: int
    params: int
    flops_per_sample: int
    train_flops_per_sample: int
    train_size: int
    history: list[EpochMetrics]
    test_loss: float
    test_accuracy: float
    samples_seen: int
    train_flops: int
    train_time_s: float  # time in training steps only: no setup, no evaluation
    wall_time_s: float
    model: nn.Module = field(repr=False)

    @property
    def error_rate(self) -> float:
        return 1.0 - self.test_accuracy

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
        data["config"] = asdict(self.config)
        data["history"] = [asdict(h) for h in self.history]
        data["error_rate"] = self.error_rate
        data["epochs_completed"] = self.samples_seen / self.train_size
        return data


def _keep_freed_memory() -> None:
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


def _channels_last_is_safe(model: nn.Module) -> bool:
    """Whether to train ``model`` in channels_last, oneDNN's fast layout on CPU.

    Not for models with a strided 1x1 convolution (ResNet's downsample): in torch 2.14.1
    its channels_last backward corrupts the heap for some shapes (9 channels, batch 33,
    14x14 crashes the process), so those models train in NCHW.
    """
    from torch import nn

    return not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
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


def _resolve_device(name: str) -> torch.device:
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MlscaleError(f"device '{name}' requested but CUDA is not available here")
    return torch.device(name)


class _Batches:
    """Normalised batches gathered from uint8 tensors already on the target device."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: float, std: float,
                 channels_last: bool) -> None:
        self.images = images.unsqueeze(1) if images.dim() == 3 else images
        self.labels = labels
        self.scale = 1.0 / (255.0 * std)
        self.shift = mean / std
        self.channels_last = channels_last

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, index: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch at ``index``: positions (a shuffled batch) or a slice (evaluation)."""
        import torch

        if isinstance(index, slice):
            images, labels = self.images[index], self.labels[index]
        else:  # index_select copies whole rows: 8x faster than advanced indexing here
            images, labels = self.images.index_select(0, index), self.labels.index_select(0, index)
        x = images.float().mul_(self.scale).sub_(self.shift)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, labels


def evaluate(model: nn.Module, batches: _Batches) -> tuple[float, float]:
    """Mean cross-entropy (nats) and accuracy of ``model`` on every sample of ``batches``.

    Always in fp32: the figures describe the fp32 model that is exported and served.
    """
    import torch
    import torch.nn.functional as F

    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    with torch.inference_mode():
        for start in range(0, len(batches), EVAL_BATCH):
            x, y = batches.get(slice(start, start + EVAL_BATCH))
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double().cpu()
            correct += (logits.argmax(1) == y).sum().cpu()
    model.train()
    return loss_sum.item() / len(batches), correct.item() / len(batches)


def _plan_samples(config: TrainConfig, train_size: int, cost: ModelCost) -> int:
    """How many training samples the run will see: epochs x size, or what the FLOPs budget buys."""
    if config.max_train_flops is None:
        return (config.epochs or 3) * train_size
    samples = int(config.max_train_flops // cost.train_flops_per_sample)
    if samples < 1:
        raise MlscaleError(
            f"max_train_flops {config.max_train_flops:g} buys less than one sample "
            f"({cost.train_flops_per_sample:,} training FLOPs each)"
        )
    return samples


def auto_batch_size(train_size: int) -> int:
    """256, or less for small subsets so one epoch takes at least 32 steps (16 at least)."""
    return min(256, max(16, train_size // 32))


def _evaluation_points(total_samples: int, train_size: int, evaluations: int | None
                       ) -> list[int]:
    """Sample counts after which to validate: each pass's end, or ``evaluations`` even steps."""
    if evaluations is None:
        points = list(range(train_size, total_samples, train_size))
    else:
        points = [total_samples * i // evaluations for i in range(1, evaluations)]
    return sorted({p for p in points if p > 0} | {total_samples})


def _one_cycle(total_steps: int, warmup_share: float = 0.25) -> Callable[[int], float]:
    """LR factor per step: linear warm-up, then cosine decay to zero (one-cycle shape).

    Written out rather than OneCycleLR, which divides by zero for runs of a few steps.
    """
    warmup = max(1, round(warmup_share * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _select_training_subset(data: Splits, config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    from mlscale.data import default_val_size, split_validation, stratified_subset

    val_size = (config.val_size if config.val_size is not None
                else default_val_size(len(data.train_labels)))
    train_idx, val_idx = split_validation(data.train_labels, val_size, config.seed)
    available = len(train_idx)
    size = config.train_size if config.train_size is not None else available
    if not 1 <= size <= available:
        raise MlscaleError(
            f"train size must be in [1, {available}] (the train split less {val_size} "
            f"validation samples), got {size}"
        )
    if size < available:
        train_idx = train_idx[stratified_subset(data.train_labels[train_idx], size, config.seed)]
    return train_idx, val_idx


def train(
    config: TrainConfig,
    *,
    data: Splits | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
) -> TrainResult:
    """Train ``config.arch`` on ``config.dataset`` and report test metrics and costs.

    The FLOPs budget is kept exactly: the number of samples it buys is computed from
    the measured training FLOPs per sample before training, and the last batch is cut
    to fit, so ``train_flops <= max_train_flops``. ``on_epoch`` may raise to stop a run
    (the search's pruner does).
    """
    import torch
    import torch.nn.functional as F

    from mlscale.data import load
    from mlscale.measure import measure_model
    from mlscale.models import get_model, model_spec, run_name

    config.validate()
    started = time.perf_counter()
    _keep_freed_memory()
    spec = model_spec(config.arch)
    config = config.with_family_defaults()
    width, depth = spec.resolve(config.width, config.depth)
    device = _resolve_device(config.device)
    precision = _resolve_precision(config.precision, device)
    data = data if data is not None else load(config.dataset, config.data_root)
    info = data.info
    train_idx, val_idx = _select_training_subset(data, config)

    torch.manual_seed(config.seed)
    channels, height, _ = info.input_shape
    model = get_model(config.arch, width=width, depth=depth, in_channels=channels,
                      num_classes=info.num_classes, image_size=height)
    cost = measure_model(model, info.input_shape, info.num_classes)
    total_samples = _plan_samples(config, len(train_idx), cost)

    channels_last = device.type == "cpu" and _channels_last_is_safe(model)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    def on_device(images: torch.Tensor, labels: torch.Tensor) -> _Batches:
        return _Batches(images.to(device), labels.to(device), info.mean, info.std, channels_last)

    train_set = on_device(data.train_images[train_idx], data.train_labels[train_idx])
    val_set = on_device(data.train_images[val_idx], data.train_labels[val_idx])
    test_set = on_device(data.test_images, data.test_labels)

    batch_size = min(config.batch_size or auto_batch_size(len(train_set)), len(train_set))
    full_passes, remainder = divmod(total_samples, len(train_set))
    total_steps = (full_passes * math.ceil(len(train_set) / batch_size)
                   + math.ceil(remainder / batch_size))
    assert config.lr is not None and config.weight_decay is not None  # resolved above
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay, fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                 _one_cycle(total_steps, spec.warmup_share))
    generator = torch.Generator().manual_seed(config.seed)

    history: list[EpochMetrics] = []
    seen, step, train_time = 0, 0, 0.0
    model.train()
    checkpoints = _evaluation_points(total_samples, len(train_set), config.evaluations)
    while seen < total_samples:
        pass_started = time.perf_counter()
        order = torch.randperm(len(train_set), generator=generator).to(device)
        pass_end = min(total_samples, seen + len(train_set))
        for start in range(0, pass_end - seen, batch_size):
            count = min(batch_size, pass_end - seen)
            x, y = train_set.get(order[start:start + count])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            seen += count
            step += 1
            if on_progress is not None and (step % 20 == 0 or seen == pass_end):
                on_progress(Progress(step, total_steps, seen / len(train_set), loss.item(),
                                     history[-1] if history else None))
            if seen >= checkpoints[0]:  # validate at the first batch end past the point
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                train_time += time.perf_counter() - pass_started
                while checkpoints and checkpoints[0] <= seen:
                    checkpoints.pop(0)
                val_loss, val_accuracy = evaluate(model, val_set)
                metrics = EpochMetrics(round(seen / len(train_set), 6), seen, val_loss,
                                       val_accuracy, train_time)
                history.append(metrics)
                if on_epoch is not None:
                    on_epoch(metrics)
                pass_started = time.perf_counter()
        train_time += time.perf_counter() - pass_started

    test_loss, test_accuracy = evaluate(model, test_set)
    return TrainResult(
        config=config,
        run_name=run_name(config.arch, width, depth),
        width=width,
        depth=depth,
        precision=precision,
        batch_size=batch_size,
        params=cost.params,
        flops_per_sample=cost.flops_per_sample,
        train_flops_per_sample=cost.train_flops_per_sample,
        train_size=len(train_set),
        history=history,
        test_loss=test_loss,
        test_accuracy=test_accuracy,
        samples_seen=seen,
        train_flops=seen * cost.train_flops_per_sample,
        train_time_s=train_time,
        wall_time_s=time.perf_counter() - started,
        model=model,
    )
