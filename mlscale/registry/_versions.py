"""Registered versions: registering one, the champion alias, resolving and loading them."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlscale.errors import MlscaleError
from mlscale.registry._settings import MlflowSettings
from mlscale.registry._store import client, mlflow_errors

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from torch import nn

CHAMPION = "champion"
TORCH_WEIGHTS = "torch/state_dict.pt"


@dataclass(frozen=True)
class RegisteredVersion:
    """One model version in the registry and whether it is now the champion."""

    name: str
    version: str
    champion: bool

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def register_version(mlflow_client: MlflowClient, name: str, model_uri: str,
                     model_id: str | None, run_id: str, tags: dict[str, str],
                     description: str) -> RegisteredVersion:
    """Register a logged model with all its tags in one call (complete, or not there at
    all) and move the champion alias to it if it is the most accurate version.

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
    number = str(version.version)
    champion = _move_champion(mlflow_client, name, number, float(tags["test_accuracy"]))
    return RegisteredVersion(name, number, champion)


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


@dataclass(frozen=True)
class ModelRef:
    """What a ``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` or bare ``NAME`` names."""

    name: str
    version: str | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, spec: str) -> ModelRef:
        body = spec.removeprefix("models:/")
        if "@" in body:
            name, alias = body.split("@", 1)
            return cls(name, alias=alias)
        name, slash, number = body.rpartition("/")
        if not slash:
            return cls(body)
        if not name or not number.isdigit():
            raise MlscaleError(f"malformed model URI '{spec}': use models:/NAME/VERSION or "
                               "models:/NAME@ALIAS")
        return cls(name, version=number)


def resolve_version(mlflow_client: MlflowClient, uri: str) -> ModelVersion:
    """The ModelVersion a ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` URI names."""
    ref = ModelRef.parse(uri)
    if ref.alias is not None:
        return mlflow_client.get_model_version_by_alias(ref.name, ref.alias)
    if ref.version is None:
        raise MlscaleError(f"malformed model URI '{uri}': use models:/NAME/VERSION or "
                           "models:/NAME@ALIAS")
    return mlflow_client.get_model_version(ref.name, ref.version)


def load_registered_onnx(uri: str, settings: MlflowSettings) -> tuple[bytes, nn.Module | None]:
    """A registered version's ONNX bytes and, where its run logged them, its torch weights."""
    import mlflow
    import torch

    from mlscale.data import dataset_info
    from mlscale.models import get_model

    mlflow_client = client(settings)
    with mlflow_errors(settings):
        version = resolve_version(mlflow_client, uri)
        proto = mlflow.onnx.load_model(f"models:/{version.name}/{version.version}")
        tags = version.tags
        if version.run_id is None:  # registered from outside a run: no torch weights
            return proto.SerializeToString(), None
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
