"""`mlscale train`'s workflow: train -> export -> time -> log -> register, one stage each.

One MLflow run per model. What can be checked first is, before the store or a run
opens: the config, the family built for the data (a training step too for user code) and
exported to ONNX, and that the experiment and registered model hold no other data of the
same name. Any later failure marks the run FAILED with its reason (a store's error as one
line naming the store, a model's naming its family) and leaves no registered version
unless every stage before registration succeeded.

>>> outcome = train_and_register(TrainConfig(arch="lenet5"), load_settings())  # doctest: +SKIP
>>> outcome.version.model_uri                                                  # doctest: +SKIP
'models:/mnist-lenet5/1'
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlscale.cost_card import CostCard, tag_value
from mlscale.errors import MlscaleError, first_line
from mlscale.registry import (
    DATASET_FINGERPRINT,
    DATASET_SOURCE,
    FAILURE_TAG,
    TORCH_WEIGHTS,
    MlflowSettings,
    RegisteredVersion,
    check_one_dataset,
    client,
    experiment_id,
    mlflow_errors,
    register_version,
)

if TYPE_CHECKING:
    import torch
    from mlflow import MlflowClient
    from mlflow.models.model import ModelInfo
    from torch import nn

    from mlscale.data import DatasetInfo, Splits
    from mlscale.export import ExportedModel
    from mlscale.latency import LatencyReport
    from mlscale.train import EpochMetrics, Progress, TrainConfig, TrainResult

__all__ = ["TrainingOutcome", "train_and_register"]


@dataclass
class TrainingOutcome:
    """Everything one tracked training produced."""

    result: TrainResult
    exported: ExportedModel
    latency: LatencyReport
    run_id: str
    version: RegisteredVersion | None
    seconds: dict[str, float]  # wall time per stage: train, export, latency, log, register

    def to_dict(self) -> dict[str, Any]:
        payload = self.result.to_dict()
        payload["onnx_max_abs_diff"] = self.exported.max_abs_diff
        payload["latency"] = self.latency.to_dict()
        payload["run_id"] = self.run_id
        payload["stage_seconds"] = self.seconds
        payload["registered"] = asdict(self.version) if self.version else None
        if self.version:
            payload["registered"]["model_uri"] = self.version.model_uri
        return payload


def train_and_register(
    config: TrainConfig,
    settings: MlflowSettings,
    *,
    register: bool = True,
    latency_batch_sizes: tuple[int, ...] | None = None,
    latency_seconds: float = 0.25,
    latency_threads: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    run_tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
    on_run_started: Callable[[str], None] | None = None,
    data: Splits | None = None,
) -> TrainingOutcome:
    """Train, export to ONNX, benchmark latency, log one MLflow run and register it.

    ``data`` skips loading the dataset (a search loads it once); ``on_run_started``
    receives the run id as soon as the run exists.
    """
    import mlflow

    from mlscale.checks import check_finite_positive
    from mlscale.data import load
    from mlscale.latency import DEFAULT_BATCH_SIZES, check_timing, default_threads
    from mlscale.models import model_spec, run_name

    # Everything checkable before the store or a run opens, so refused input leaves no
    # FAILED run: the config (device, budget, sizes), the timing settings, then the family
    # built for the data, trained a step and exported.
    config.validate()
    check_finite_positive(latency_seconds, "latency seconds")
    config = config.with_family_defaults()
    width, depth = model_spec(config.arch).resolve(config.width, config.depth)
    data = data if data is not None else load(config.dataset, config.data_root)
    latency_batch_sizes = latency_batch_sizes or DEFAULT_BATCH_SIZES
    check_timing(latency_batch_sizes,
                 default_threads() if latency_threads is None else latency_threads,
                 None, latency_seconds, data.info.input_shape)
    _check_family(config.arch, width, depth, data.info.input_shape, data.info.num_classes)
    data_tags = _data_tags(config.dataset, data.info)
    mlflow_client = client(settings)
    experiment = settings.experiment_name(config.dataset)
    exp_id = experiment_id(settings, experiment)
    check_one_dataset(settings, (exp_id, experiment),
                      settings.model_name(config.dataset, config.arch) if register else None,
                      data_tags.get(DATASET_SOURCE, ""), data.info.fingerprint)
    with mlflow_errors(settings):
        run = mlflow.start_run(experiment_id=exp_id, tags=(run_tags or {}) | data_tags,
                               run_name=run_name(config.arch, width, depth),
                               parent_run_id=parent_run_id, nested=parent_run_id is not None)
    run_id = run.info.run_id
    try:  # the store's errors as one line naming it; every other error as it is
        if on_run_started is not None:
            on_run_started(run_id)
        with mlflow_errors(settings):
            mlflow.log_params({k: str(v) for k, v in asdict(config).items()})
            mlflow.log_dict(asdict(config), "config.json")
        clock = _StageClock()
        result = _train_family(config, width, depth, data, on_progress, on_epoch)
        with mlflow_errors(settings):
            _log_training(result)
        clock.lap("train")
        batch = _test_batch(data)
        exported = _export(result.model, batch)
        clock.lap("export")
        latency = _time(exported, data, result.model, latency_batch_sizes, latency_threads,
                        latency_seconds)
        clock.lap("latency")
        card = CostCard.of(result, latency)
        with mlflow_errors(settings):
            model_info = _log_model(result, exported, latency, card, batch)
            clock.lap("log")
            version = (_register(mlflow_client, settings, result, data, card, latency,
                                 model_info, run_id, data_tags) if register else None)
            clock.lap("register")
            mlflow.log_metrics({f"seconds_{stage}": value for stage, value in clock.laps.items()})
            mlflow.end_run("FINISHED")
    except BaseException as error:
        _fail_run(mlflow_client, run_id, error)
        raise
    return TrainingOutcome(result, exported, latency, run_id, version, clock.laps)


def _check_family(arch: str, width: float, depth: int, input_shape: tuple[int, int, int],
                  num_classes: int) -> None:
    """The family built at its dials for the data's shape (a user's: its output shape and
    a training step too, by ``cost_of``) and exported to ONNX untrained, so that a model
    that cannot train or export fails before its run, not after training. A zoo family's
    width changes only its channel counts, so it is checked once per depth and data shape
    (a search proposes a new width almost every trial); a user's family at every width."""
    from mlscale.models import model_spec

    _check_built(arch, width if model_spec(arch).source else None, depth, input_shape,
                 num_classes)


@functools.lru_cache(maxsize=64)
def _check_built(arch: str, width: float | None, depth: int,
                 input_shape: tuple[int, int, int], num_classes: int) -> None:
    """``_check_family`` once per model shape in a process (``width`` None: the default)."""
    from mlscale.export import check_exportable
    from mlscale.measure import cost_of
    from mlscale.models import get_model

    if width is not None:  # a user's family: it may fail in train mode or its backward
        cost_of(arch, width, depth, input_shape, num_classes)
    model = get_model(arch, width=width, depth=depth, in_channels=input_shape[0],
                      num_classes=num_classes, image_size=input_shape[1])
    dials = f"width={width}, depth={depth}" if width is not None else f"depth={depth}"
    check_exportable(model, input_shape, f"family {arch} at {dials}")


def _data_tags(dataset: str, info: DatasetInfo) -> dict[str, str]:
    """A user source's run and version tags: where its files are and its content's
    fingerprint (see ``mlscale.registry.check_one_dataset``); none for a built-in."""
    from mlscale.names import split_source
    from mlscale.sources import resolved_source

    if split_source(dataset) is None:
        return {}
    return {DATASET_SOURCE: resolved_source(dataset), DATASET_FINGERPRINT: info.fingerprint}


def _train_family(config: TrainConfig, width: float, depth: int, data: Splits,
                  on_progress: Callable[[Progress], None] | None,
                  on_epoch: Callable[[EpochMetrics], None] | None) -> TrainResult:
    """``train``, where an error the model raises is a one-line error naming the family
    and its dials (a callback's, such as a pruner's stop, passes as it is)."""
    from mlscale.train import train

    from_callbacks: list[BaseException] = []

    def relayed(callback: Callable[[Any], None] | None) -> Callable[[Any], None] | None:
        if callback is None:
            return None

        def call(value: Any) -> None:
            try:
                callback(value)
            except BaseException as error:
                from_callbacks.append(error)
                raise

        return call

    try:
        return train(config, data=data, on_progress=relayed(on_progress),
                     on_epoch=relayed(on_epoch))
    except MlscaleError:
        raise
    except Exception as error:
        if error in from_callbacks:
            raise
        raise MlscaleError(f"family {config.arch} failed in training at width={width}, "
                           f"depth={depth}: {type(error).__name__}: {first_line(error)}"
                           ) from error


def _test_batch(data: Splits) -> torch.Tensor:
    """The first 256 test images, normalized as the model sees them."""
    images = data.test_images[:256]
    images = (images.unsqueeze(1) if images.dim() == 3 else images).float().div(255)
    return images.sub(data.info.mean).div(data.info.std)


def _export(model: nn.Module, batch: torch.Tensor) -> ExportedModel:
    """ONNX, checked against torch on ``batch``."""
    from mlscale.export import export_onnx

    return export_onnx(model, batch)


def _time(exported: ExportedModel, data: Splits, model: nn.Module,
          batch_sizes: tuple[int, ...], threads: int | None, seconds: float) -> LatencyReport:
    """ONNX Runtime latency at each batch size, torch eager at batch 1 beside it."""
    from mlscale.latency import benchmark_onnx

    return benchmark_onnx(exported.serialized(), data.info.input_shape, batch_sizes=batch_sizes,
                          threads=threads, seconds=seconds, torch_model=model)


def _log_model(result: TrainResult, exported: ExportedModel, latency: LatencyReport,
               card: CostCard, batch: torch.Tensor) -> ModelInfo:
    """The cost card as metrics, the ONNX model, its latency report and the torch weights."""
    import mlflow
    from mlflow.models import infer_signature

    mlflow.log_metrics(card.figures() | {"onnx_max_abs_diff": exported.max_abs_diff})
    example = batch[:1].numpy()
    signature = infer_signature(example, result.model(batch[:1]).detach().numpy())
    model_info = mlflow.onnx.log_model(exported.model, name="model", signature=signature,
                                       input_example=example,
                                       onnx_execution_providers=["CPUExecutionProvider"],
                                       pip_requirements=_serving_requirements())
    mlflow.log_dict(latency.to_dict(), "latency.json")
    mlflow.log_text(latency.markdown(), "latency.md")
    _log_state_dict(result.model)
    return model_info


def _register(mlflow_client: MlflowClient, settings: MlflowSettings, result: TrainResult,
              data: Splits, card: CostCard, latency: LatencyReport, model_info: ModelInfo,
              run_id: str, data_tags: dict[str, str]) -> RegisteredVersion:
    """A registered version carrying the cost card and what the model takes and gives."""
    import mlflow

    config = result.config
    tags = card.tags() | {
        "dataset": data.info.name, "arch": config.arch, "width": tag_value(result.width),
        "depth": str(result.depth), "run_name": result.run_name,
        "input_shape": "x".join(map(str, data.info.input_shape)),
        "num_classes": str(data.info.num_classes),
        "throughput_batch_size": str(latency.largest_batch.batch_size)} | data_tags
    version = register_version(mlflow_client, settings.model_name(config.dataset, config.arch),
                               model_info.model_uri, model_info.model_id, run_id, tags,
                               _description(result, latency))
    mlflow.set_tag("mlscale.registered_model", version.model_uri)
    return version


def _fail_run(mlflow_client: MlflowClient, run_id: str, error: BaseException) -> None:
    """The reason in the run's failure tag; KILLED for a signal or Ctrl-C, else FAILED."""
    import mlflow

    with contextlib.suppress(Exception):
        mlflow_client.set_tag(run_id, FAILURE_TAG, first_line(error)[:5000])
    status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
    # An unreachable store keeps the run RUNNING; a search marks it once it is back.
    with contextlib.suppress(Exception):
        mlflow.end_run(status)


def _description(result: TrainResult, latency: LatencyReport) -> str:
    return (f"{result.run_name} on {result.config.dataset}: test accuracy "
            f"{result.test_accuracy:.2%}, test loss {result.test_loss:.4f} nats; "
            f"{result.params:,} params, {result.flops_per_sample:,} FLOPs per sample, "
            f"{result.train_flops:.3g} training FLOPs (FLOPs = 2 x MACs); "
            f"{latency.headline()}."
            + (f" Warning: {latency.busy_warning}." if latency.busy_warning else ""))


class _StageClock:
    """Wall seconds between successive laps, by stage name."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = now - self._last
        self._last = now


def _serving_requirements() -> list[str]:
    """What serving the ONNX model needs, pinned to what exported and timed it.

    Given explicitly: MLflow would otherwise infer them in a subprocess (about 1.2 s).
    """
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("onnx", "onnxruntime", "numpy")]


def _log_state_dict(model: nn.Module) -> None:
    """The torch weights beside the ONNX model, so torch eager latency can be re-measured."""
    import tempfile

    import mlflow
    import torch

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / TORCH_WEIGHTS.split("/")[-1]
        torch.save(model.state_dict(), path)
        mlflow.log_artifact(str(path), TORCH_WEIGHTS.split("/")[0])


def _log_training(result: TrainResult) -> None:
    """Per-epoch validation metrics as steps, the final figures, the resolved dials."""
    import mlflow

    for index, epoch in enumerate(result.history, start=1):
        mlflow.log_metrics({"val_loss": epoch.val_loss, "val_accuracy": epoch.val_accuracy},
                           step=index)
    mlflow.log_metrics({
        "test_loss": result.test_loss, "test_accuracy": result.test_accuracy,
        "error_rate": result.error_rate, "params": result.params,
        "flops_per_sample": result.flops_per_sample,
        "train_flops_per_sample": result.train_flops_per_sample,
        "train_flops": result.train_flops, "samples_seen": result.samples_seen,
        "wall_time_s": result.wall_time_s, "train_time_s": result.train_time_s})
    mlflow.log_params({"resolved_width": tag_value(result.width),
                       "resolved_depth": result.depth,
                       "resolved_precision": result.precision,
                       "resolved_batch_size": result.batch_size,
                       "resolved_train_size": result.train_size})
