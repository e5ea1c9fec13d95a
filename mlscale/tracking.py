"""MLflow tracking and Model Registry: one run and one registered version per model.

Settings come from ``mlflow.yaml`` (relative paths resolve against its folder, so the
store is the same from any working directory); ``MLFLOW_TRACKING_URI`` /
``MLFLOW_REGISTRY_URI`` and an explicit ``tracking_uri`` override it, as MLflow users
expect.

>>> settings = load_settings()                                     # doctest: +SKIP
>>> outcome = train_and_register(TrainConfig(arch="lenet5"), settings)  # doctest: +SKIP
>>> outcome.version.model_uri                                      # doctest: +SKIP
'models:/mnist-lenet5/1'
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlscale.errors import MlscaleError, first_line
from mlscale.markdown import markdown_table

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient
    from torch import nn

    from mlscale.data import Splits
    from mlscale.export import ExportedModel
    from mlscale.latency import LatencyReport
    from mlscale.train import EpochMetrics, Progress, TrainConfig, TrainResult

__all__ = [
    "CHAMPION",
    "COST_CARD",
    "MlflowSettings",
    "RegisteredVersion",
    "TrainingOutcome",
    "load_settings",
    "models_frame",
    "train_and_register",
]

CHAMPION = "champion"
FAILURE_TAG = "mlscale.failure"
# The version tags every registered model carries: what it cost and what it scored.
COST_CARD = ("params", "flops_per_sample", "train_flops", "test_accuracy", "test_loss",
             "latency_p50_ms", "latency_p90_ms", "throughput")
CONFIG_ENV = "MLSCALE_MLFLOW_CONFIG"
TORCH_WEIGHTS = "torch/state_dict.pt"


@dataclass(frozen=True)
class MlflowSettings:
    """Where runs and models go, and how experiments and registered models are named."""

    tracking_uri: str = "sqlite:///registry/mlflow.db"
    registry_uri: str | None = None  # None: the tracking URI
    artifact_location: str | None = "registry/artifacts"
    experiment: str = "mlscale-{dataset}"
    registered_model: str = "{dataset}-{arch}"

    def experiment_name(self, dataset: str) -> str:
        from mlscale.names import dataset_name

        return self.experiment.format(dataset=dataset_name(dataset))

    def model_name(self, dataset: str, arch: str) -> str:
        """The registered model's name, by the rules of ``mlscale.names``."""
        from mlscale.names import arch_name, dataset_name

        return self.registered_model.format(dataset=dataset_name(dataset), arch=arch_name(arch))


def _config_path() -> Path | None:
    if env := os.environ.get(CONFIG_ENV):
        return Path(env)
    checkout = Path(__file__).resolve().parents[1] / "mlflow.yaml"
    if checkout.is_file():
        return checkout
    cwd = Path.cwd() / "mlflow.yaml"
    return cwd if cwd.is_file() else None


def _absolute_sqlite(uri: str, base: Path) -> str:
    """``sqlite:///relative.db`` -> ``sqlite:////abs/relative.db``."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return uri
    path = Path(uri[len(prefix):])
    if not path.is_absolute():
        path = base / path
    return prefix + str(path.resolve())


def _check_local_store(uri: str, create: bool) -> None:
    """A SQLite or file store on this machine: its folder made when ``create`` (writers),
    else it must exist, so that a mistyped path is an error and not a new, empty store."""
    from urllib.parse import unquote, urlparse

    if uri.startswith("sqlite:///"):
        path, folder = Path(uri[len("sqlite:///"):]), Path(uri[len("sqlite:///"):]).parent
    elif uri.startswith("file:"):
        path = folder = Path(unquote(urlparse(uri).path))
    else:
        return  # a server or database: its client reports it
    if not create:
        if not path.exists():
            raise MlscaleError(f"no MLflow store at {path} (`mlscale train` or `mlscale "
                               "search` creates one; --tracking-uri picks another)")
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MlscaleError(f"cannot create the MLflow store {path}: "
                           f"{error.strerror or type(error).__name__}") from None


def load_settings(tracking_uri: str | None = None, *, create: bool = True) -> MlflowSettings:
    """Read ``mlflow.yaml`` and apply the environment and ``tracking_uri`` overrides.

    ``create=False`` (commands that only read) refuses a local store that does not exist.
    """
    from mlscale.checks import load_yaml_file

    path = _config_path()
    values: dict[str, Any] = {}
    if path is not None:
        values = load_yaml_file(path, "MLflow settings") or {}
        known = {f.name for f in fields(MlflowSettings)}
        if not isinstance(values, dict) or set(values) - known:
            unknown = sorted(set(values) - known) if isinstance(values, dict) else values
            raise MlscaleError(f"{path}: unknown key(s) {unknown}; known: {sorted(known)}")
    base = path.parent if path is not None else Path.cwd()
    settings = MlflowSettings(**values)
    override = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    artifact_location = settings.artifact_location
    if override:
        # The configured artifact folder belongs to the configured store; another store
        # keeps its artifacts beside its database (or on its server).
        artifact_location = None
        uri = override
    else:
        uri = settings.tracking_uri
        if artifact_location and "://" not in artifact_location:
            artifact_location = (base / artifact_location).resolve().as_uri()
    uri = _absolute_sqlite(uri, Path.cwd() if override else base)
    if artifact_location is None and uri.startswith("sqlite:///"):
        artifact_location = (Path(uri[len("sqlite:///"):]).parent / "artifacts").as_uri()
    # An explicit store brings its registry: MLflow itself exports MLFLOW_REGISTRY_URI
    # whenever a client points at a store, so the environment may name the last store used.
    registry = uri if tracking_uri else (
        os.environ.get("MLFLOW_REGISTRY_URI") or settings.registry_uri or uri)
    registry = _absolute_sqlite(registry, base)
    for store in dict.fromkeys((uri, registry)):
        _check_local_store(store, create)
    return MlflowSettings(uri, registry, artifact_location, settings.experiment,
                          settings.registered_model)


@contextlib.contextmanager
def mlflow_errors(settings: MlflowSettings) -> Iterator[None]:
    """Turn MLflow and connection failures into one-line MlscaleErrors."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlscaleError:
        raise
    except (MlflowException, OSError, ValueError) as error:
        raise MlscaleError(
            f"MLflow store {settings.tracking_uri} failed: {first_line(error, 300)}"
        ) from None


def check_uri_scheme(uri: str) -> None:
    """A one-line error for a tracking URI without a scheme (a path or a typo)."""
    if "://" not in uri and not uri.startswith("databricks"):
        raise MlscaleError(f"malformed tracking URI '{uri}': expected a scheme such as "
                           "sqlite:///path.db, http://host:port or file:///dir")


def client(settings: MlflowSettings) -> MlflowClient:
    """An MlflowClient on the configured stores (fails fast on unreachable servers)."""
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no per-call INFO chatter
    # An unreachable server otherwise retries with back-off for minutes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keeps --json clean
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a server's run URLs
    check_uri_scheme(settings.tracking_uri)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.registry_uri or settings.tracking_uri)
    with mlflow_errors(settings), _first_opening(settings) as fresh:
        mlflow_client = mlflow.MlflowClient(settings.tracking_uri, settings.registry_uri)
        if fresh:  # open (and migrate) both stores while holding the lock
            mlflow_client.search_experiments(max_results=1)
            mlflow_client.search_registered_models(max_results=1)
        return mlflow_client


_READY_SQLITE_STORES: set[str] = set()


@contextlib.contextmanager
def _first_opening(settings: MlflowSettings) -> Iterator[list[str]]:
    """Create (or migrate) this process's SQLite stores one process at a time.

    MLflow builds a fresh SQLite store's schema in the first process that opens it; two
    processes doing so at once make one fail in the migration. A file lock beside the
    database serializes that first opening (a server's store migrates in its server), and
    SIGTERM/SIGINT wait for its end.
    """
    from filelock import FileLock

    from mlscale._signals import deferred_signals

    uris = {settings.tracking_uri, settings.registry_uri or settings.tracking_uri}
    fresh = sorted(u for u in uris - _READY_SQLITE_STORES if u.startswith("sqlite:///"))
    with contextlib.ExitStack() as locks:
        if fresh:  # a migration stopped half-way would leave the store unusable
            locks.enter_context(deferred_signals())
        for uri in fresh:
            locks.enter_context(FileLock(uri.removeprefix("sqlite:///") + ".lock", timeout=300))
        yield fresh
    _READY_SQLITE_STORES.update(fresh)


def experiment_id(settings: MlflowSettings, name: str) -> str:
    """The id of experiment ``name``, created (with the configured artifact folder) if new."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(settings)
    with mlflow_errors(settings):
        existing = mlflow_client.get_experiment_by_name(name)
        if existing is not None:
            return str(existing.experiment_id)
        try:
            return str(mlflow_client.create_experiment(name, settings.artifact_location))
        except MlflowException:  # another worker created it first
            existing = mlflow_client.get_experiment_by_name(name)
            if existing is None:
                raise
            return str(existing.experiment_id)


@dataclass(frozen=True)
class RegisteredVersion:
    """One model version in the registry and whether it is now the champion."""

    name: str
    version: str
    champion: bool

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


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


def cost_card(result: TrainResult, latency: LatencyReport) -> dict[str, float | int | str]:
    """The figures a registered version carries as tags (and its run as metrics)."""
    batch1 = latency.at_batch(1) if any(s.batch_size == 1 for s in latency.onnx) else None
    card: dict[str, float | int | str] = {
        "params": result.params,
        "flops_per_sample": result.flops_per_sample,
        "train_flops_per_sample": result.train_flops_per_sample,
        "train_flops": result.train_flops,
        "samples_seen": result.samples_seen,
        "train_size": result.train_size,
        "test_accuracy": result.test_accuracy,
        "test_loss": result.test_loss,
        "error_rate": result.error_rate,
        "throughput": latency.largest_batch.throughput,
        "latency_threads": latency.threads,
    }
    if batch1 is not None:
        card |= {"latency_p50_ms": batch1.p50_ms, "latency_p90_ms": batch1.p90_ms,
                 "latency_p99_ms": batch1.p99_ms}
    return card


def latency_markdown(report: LatencyReport) -> str:
    """The latency table as Markdown, with the set-up it was measured on."""
    headers, rows = report.table()
    setup = (f"ONNX Runtime CPU, {report.threads} thread(s), {report.cpu}; "
             + ", ".join(f"{k} {v}" for k, v in report.versions.items()))
    return f"{setup}\n\n{markdown_table(headers, rows)}\n"


def _register(mlflow_client: MlflowClient, name: str, model_uri: str, model_id: str | None,
              run_id: str, tags: dict[str, str], description: str) -> str:
    """Create the version with all its tags in one call: complete, or not there at all.

    ``model_id`` names the logged model the ``models:/m-...`` source points at: a tracking
    server refuses a logged-model source without it (a local store resolves it itself).
    """
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.get_registered_model(name)
    except MlflowException:
        with contextlib.suppress(MlflowException):  # another worker may have made it
            mlflow_client.create_registered_model(
                name, description="Models registered by mlscale, one version per training run.")
    version = mlflow_client.create_model_version(name, model_uri, run_id, tags=tags,
                                                 description=description, model_id=model_id)
    return str(version.version)


def _move_champion(mlflow_client: MlflowClient, name: str, version: str,
                   accuracy: float) -> bool:
    """Point the champion alias at ``version`` if it beats the current champion."""
    from mlflow.exceptions import MlflowException

    try:
        current = mlflow_client.get_model_version_by_alias(name, CHAMPION)
        best = float(current.tags.get("test_accuracy", "-inf"))
    except MlflowException:
        best = float("-inf")
    if accuracy > best:
        mlflow_client.set_registered_model_alias(name, CHAMPION, version)
        return True
    return False


def _tag_value(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


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

    Any failure marks the run FAILED with the reason in the ``mlscale.failure`` tag,
    and no version is registered unless every step before registration succeeded.
    ``data`` skips loading the dataset (a search loads it once); ``on_run_started``
    receives the run id as soon as the run exists.
    """
    import mlflow
    from mlflow.models import infer_signature

    from mlscale.checks import check_finite_positive
    from mlscale.data import load
    from mlscale.export import export_onnx
    from mlscale.latency import DEFAULT_BATCH_SIZES, benchmark_onnx
    from mlscale.models import model_spec, run_name
    from mlscale.train import train

    config.validate()
    check_finite_positive(latency_seconds, "latency seconds")  # before, not after, training
    config = config.with_family_defaults()
    spec = model_spec(config.arch)
    name = run_name(config.arch, config.width if config.width is not None else spec.default_width,
                    config.depth if config.depth is not None else spec.default_depth)
    data = data if data is not None else load(config.dataset, config.data_root)
    mlflow_client = client(settings)
    exp_id = experiment_id(settings, settings.experiment_name(config.dataset))
    with mlflow_errors(settings):
        run = mlflow.start_run(experiment_id=exp_id, run_name=name, tags=run_tags,
                               parent_run_id=parent_run_id, nested=parent_run_id is not None)
    run_id = run.info.run_id
    try:
        if on_run_started is not None:
            on_run_started(run_id)
        mlflow.log_params({k: str(v) for k, v in asdict(config).items()})
        mlflow.log_dict(asdict(config), "config.json")
        clock = _StageClock()
        result = train(config, data=data, on_progress=on_progress, on_epoch=on_epoch)
        clock.lap("train")
        _log_training(result)
        images = data.test_images[:256]
        images = (images.unsqueeze(1) if images.dim() == 3 else images).float().div(255)
        batch = images.sub(data.info.mean).div(data.info.std)
        exported = export_onnx(result.model, batch)
        clock.lap("export")
        latency = benchmark_onnx(exported.serialized(), data.info.input_shape,
                                 batch_sizes=latency_batch_sizes or DEFAULT_BATCH_SIZES,
                                 threads=latency_threads, seconds=latency_seconds,
                                 torch_model=result.model)
        clock.lap("latency")
        card = cost_card(result, latency)
        mlflow.log_metrics({k: float(v) for k, v in card.items()}
                           | {"onnx_max_abs_diff": exported.max_abs_diff})
        example = batch[:1].numpy()
        signature = infer_signature(example, result.model(batch[:1]).detach().numpy())
        model_info = mlflow.onnx.log_model(exported.model, name="model", signature=signature,
                                           input_example=example,
                                           onnx_execution_providers=["CPUExecutionProvider"],
                                           pip_requirements=_serving_requirements())
        mlflow.log_dict(latency.to_dict(), "latency.json")
        mlflow.log_text(latency_markdown(latency), "latency.md")
        _log_state_dict(result.model)
        clock.lap("log")
        version = None
        if register:
            model_name = settings.model_name(config.dataset, config.arch)
            tags = {k: _tag_value(v) for k, v in card.items()}
            tags |= {"dataset": data.info.name, "arch": config.arch,
                     "width": _tag_value(result.width), "depth": str(result.depth),
                     "run_name": result.run_name,
                     "input_shape": "x".join(map(str, data.info.input_shape)),
                     "num_classes": str(data.info.num_classes)}
            if data.info.name != config.dataset:  # a user source: where its files are
                tags["dataset_source"] = config.dataset
            number = _register(mlflow_client, model_name, model_info.model_uri,
                               model_info.model_id, run_id, tags, _description(result, latency))
            champion = _move_champion(mlflow_client, model_name, number, result.test_accuracy)
            version = RegisteredVersion(model_name, number, champion)
            mlflow.set_tag("mlscale.registered_model", version.model_uri)
        clock.lap("register")
        mlflow.log_metrics({f"seconds_{stage}": value for stage, value in clock.laps.items()})
        mlflow.end_run("FINISHED")
    except BaseException as error:
        reason = first_line(error)
        with contextlib.suppress(Exception):
            mlflow_client.set_tag(run_id, FAILURE_TAG, reason[:5000])
        # Stopped by a signal or Ctrl-C: KILLED, as MLflow names a run ended from outside.
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        # An unreachable store keeps the run RUNNING; a search marks it once it is back.
        with contextlib.suppress(Exception):
            mlflow.end_run(status)
        with mlflow_errors(settings):  # a store's error as one line, naming the store
            raise
    return TrainingOutcome(result, exported, latency, run_id, version, clock.laps)


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


def _resolve_version(mlflow_client: MlflowClient, uri: str) -> Any:
    """The ModelVersion a ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` URI names."""
    body = uri.removeprefix("models:/")
    if "@" in body:
        name, alias = body.split("@", 1)
        return mlflow_client.get_model_version_by_alias(name, alias)
    name, _, number = body.rpartition("/")
    if not name or not number.isdigit():
        raise MlscaleError(f"malformed model URI '{uri}': use models:/NAME/VERSION or "
                           "models:/NAME@ALIAS")
    return mlflow_client.get_model_version(name, number)


def load_registered_onnx(uri: str, settings: MlflowSettings) -> tuple[bytes, nn.Module | None]:
    """A registered version's ONNX bytes and, where its run logged them, its torch weights."""
    import mlflow
    import torch

    from mlscale.data import dataset_info
    from mlscale.models import get_model

    mlflow_client = client(settings)
    with mlflow_errors(settings):
        version = _resolve_version(mlflow_client, uri)
        proto = mlflow.onnx.load_model(f"models:/{version.name}/{version.version}")
        tags = version.tags
        try:
            weights = mlflow_client.download_artifacts(version.run_id, TORCH_WEIGHTS)
        except (OSError, mlflow.exceptions.MlflowException):
            return proto.SerializeToString(), None
    if "input_shape" in tags:  # the cost card says what the model takes and gives
        channels, size, _ = (int(n) for n in tags["input_shape"].split("x"))
        classes = int(tags["num_classes"])
    else:  # versions registered before the card carried the shape: built-in datasets
        info = dataset_info(tags["dataset"])
        (channels, size, _), classes = info.input_shape, info.num_classes
    model = get_model(tags["arch"], width=float(tags["width"]), depth=int(tags["depth"]),
                      in_channels=channels, num_classes=classes, image_size=size)
    model.load_state_dict(torch.load(weights, weights_only=True))
    return proto.SerializeToString(), model.eval()


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
    mlflow.log_params({"resolved_width": _tag_value(result.width),
                       "resolved_depth": result.depth,
                       "resolved_precision": result.precision,
                       "resolved_batch_size": result.batch_size,
                       "resolved_train_size": result.train_size})


def _description(result: TrainResult, latency: LatencyReport) -> str:
    batch1 = latency.at_batch(1) if any(s.batch_size == 1 for s in latency.onnx) else None
    speed = f"p90 {batch1.p90_ms:.3f} ms at batch 1, " if batch1 else ""
    return (f"{result.run_name} on {result.config.dataset}: test accuracy "
            f"{result.test_accuracy:.2%}, test loss {result.test_loss:.4f} nats; "
            f"{result.params:,} params, {result.flops_per_sample:,} FLOPs per sample, "
            f"{result.train_flops:.3g} training FLOPs (FLOPs = 2 x MACs); ONNX Runtime "
            f"{speed}{latency.largest_batch.throughput:,.0f} samples/s at batch "
            f"{latency.largest_batch.batch_size} on {latency.threads} thread(s).")


NUMERIC_COLUMNS = ("params", "flops_per_sample", "train_flops_per_sample", "train_flops",
                   "samples_seen", "train_size", "test_accuracy", "test_loss", "error_rate",
                   "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "throughput",
                   "latency_threads", "width", "depth")


def models_frame(settings: MlflowSettings, *, dataset: str | None = None,
                 arch: str | None = None) -> pd.DataFrame:
    """One row per registered model version with its cost card, best accuracy first."""
    import pandas as pd

    mlflow_client = client(settings)
    rows = []
    with mlflow_errors(settings):
        aliases: dict[tuple[str, str], list[str]] = {}
        for model in all_pages(mlflow_client.search_registered_models, 1000):
            for alias, version in (model.aliases or {}).items():
                aliases.setdefault((model.name, str(version)), []).append(alias)
        for version in all_pages(mlflow_client.search_model_versions, 10_000):
            tags = dict(version.tags)
            row: dict[str, Any] = {"name": version.name, "version": int(version.version),
                                   "model_uri": f"models:/{version.name}/{version.version}",
                                   "aliases": ",".join(aliases.get((version.name,
                                                                    str(version.version)), [])),
                                   "run_id": version.run_id,
                                   "created": pd.Timestamp(version.creation_timestamp,
                                                           unit="ms")}
            row |= {k: tags.get(k) for k in ("dataset", "arch", "run_name")}
            row |= {k: tags.get(k) for k in NUMERIC_COLUMNS}
            rows.append(row)
    frame = pd.DataFrame(rows, columns=["name", "version", "model_uri", "aliases", "dataset",
                                        "arch", "run_name", *NUMERIC_COLUMNS, "run_id",
                                        "created"])
    for column in NUMERIC_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    if dataset is not None:  # a user source's spec or its registry name
        from mlscale.names import dataset_name

        frame = frame[frame["dataset"] == dataset_name(dataset)]
    if arch is not None:
        frame = frame[frame["arch"] == arch]
    return frame.sort_values(["test_accuracy", "name", "version"],
                             ascending=[False, True, True]).reset_index(drop=True)


def all_pages(search: Callable[..., Any], max_results: int) -> list[Any]:
    """Every item of a paged MLflow search."""
    found, token = [], None
    while True:
        page = search(max_results=max_results, page_token=token)
        found += list(page)
        token = page.token
        if not token:
            return found


def frame_to_json(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Records with NaN as null and timestamps as ISO strings."""
    return json.loads(frame.to_json(orient="records", date_format="iso"))
