"""What a training run is asked (``TrainConfig``) and what it gives back."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from mlscale.errors import MlscaleError

if TYPE_CHECKING:
    from torch import nn


# Evaluation batch: benchmarks/eval_batch.py (12,000 samples, default widths, 2 threads)
# measured 256 against 1,000 at 1.66x for resnet_mini, 1.30-1.32x for vgg_mini and
# alexnet_mini, 1.13x for inception_mini (activations stay in cache), 0.82x for lenet5,
# whose evaluation is under 0.6 s either way.
EVAL_BATCH = 256
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
        """Raise MlscaleError on the first impossible value, before any data is loaded or
        anything is written: the values themselves, the device being on this machine, the
        sizes against the dataset's splits and a FLOPs budget buying at least one sample.

        Messages name the field and, in parentheses, the ``mlscale train`` flag.
        """
        if self.epochs is not None and self.max_train_flops is not None:
            raise MlscaleError("give either epochs (--epochs) or max_train_flops "
                               "(--max-train-flops), not both")
        if self.epochs is not None and self.epochs < 1:
            raise MlscaleError(f"epochs (--epochs) must be >= 1, got {self.epochs}")
        if self.max_train_flops is not None and not (
            math.isfinite(self.max_train_flops) and self.max_train_flops > 0
        ):
            raise MlscaleError(f"max_train_flops (--max-train-flops) must be a positive "
                               f"number, got {self.max_train_flops}")
        from mlscale.models import check_dials

        check_dials(self.arch, self.width, self.depth)  # before any data is read
        self._check_sizes()
        if self.evaluations is not None and self.evaluations < 1:
            raise MlscaleError(f"evaluations must be >= 1, got {self.evaluations}")
        if self.batch_size is not None and self.batch_size < 1:
            raise MlscaleError(f"batch size (--batch-size) must be >= 1, got {self.batch_size}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise MlscaleError(f"learning rate (--lr) must be positive, got {self.lr}")
        if self.weight_decay is not None and not (
            math.isfinite(self.weight_decay) and self.weight_decay >= 0
        ):
            raise MlscaleError(f"weight decay must be >= 0, got {self.weight_decay}")
        if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", self.device):
            raise MlscaleError(f"device (--device) must be cpu, cuda or cuda:N, "
                               f"got '{self.device}'")
        if self.precision not in PRECISIONS:
            raise MlscaleError(
                f"precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'"
            )
        from mlscale.train._device import check_device

        check_device(self.device)
        self._check_budget()

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

    def _check_budget(self) -> None:
        """A FLOPs budget buys at least one sample: the model's training FLOPs per sample
        are measured from shapes alone (no weights, no data for a built-in dataset)."""
        if self.max_train_flops is None:
            return
        from mlscale.data import dataset_info
        from mlscale.measure import cost_of
        from mlscale.models import model_spec

        info = dataset_info(self.dataset, self.data_root)
        width, depth = model_spec(self.arch).resolve(self.width, self.depth)
        samples_bought(self.max_train_flops, cost_of(
            self.arch, width, depth, info.input_shape, info.num_classes).train_flops_per_sample)


def samples_bought(max_train_flops: float, train_flops_per_sample: int) -> int:
    """The samples a training FLOPs budget pays for; an error when not even one."""
    samples = int(max_train_flops // train_flops_per_sample)
    if samples < 1:
        raise MlscaleError(
            f"max_train_flops (--max-train-flops) {max_train_flops:g} buys less than one "
            f"sample: this model takes {train_flops_per_sample:,} training FLOPs per sample")
    return samples


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
