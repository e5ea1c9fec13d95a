"""The MLflow tracking store and Model Registry: settings, client, versions, queries.

Settings come from ``mlflow.yaml`` (relative paths resolve against its folder, so the
store is the same from any working directory); ``MLFLOW_TRACKING_URI`` /
``MLFLOW_REGISTRY_URI`` and an explicit ``tracking_uri`` override it, as MLflow users
expect. ``mlscale.workflow`` writes runs and versions; this module opens, names and reads.

>>> settings = load_settings()                                      # doctest: +SKIP
>>> models_frame(settings)[["model_uri", "test_accuracy"]].head(1)  # doctest: +SKIP
"""

from __future__ import annotations

from mlscale.registry._frame import (
    NUMERIC_COLUMNS,
    frame_to_json,
    models_frame,
    no_models_message,
)
from mlscale.registry._one_dataset import DATASET_FINGERPRINT, DATASET_SOURCE, check_one_dataset
from mlscale.registry._settings import (
    MlflowSettings,
    check_database_scheme,
    check_uri_scheme,
    config_dir,
    load_settings,
)
from mlscale.registry._store import all_pages, client, experiment_id, mlflow_errors
from mlscale.registry._versions import (
    CHAMPION,
    TORCH_WEIGHTS,
    ModelRef,
    RegisteredVersion,
    load_registered_onnx,
    register_version,
    resolve_version,
)

FAILURE_TAG = "mlscale.failure"  # a failed run's reason, on the run

__all__ = [
    "CHAMPION",
    "DATASET_FINGERPRINT",
    "DATASET_SOURCE",
    "FAILURE_TAG",
    "NUMERIC_COLUMNS",
    "TORCH_WEIGHTS",
    "MlflowSettings",
    "ModelRef",
    "RegisteredVersion",
    "all_pages",
    "check_database_scheme",
    "check_one_dataset",
    "check_uri_scheme",
    "client",
    "config_dir",
    "experiment_id",
    "frame_to_json",
    "load_registered_onnx",
    "load_settings",
    "mlflow_errors",
    "models_frame",
    "no_models_message",
    "register_version",
    "resolve_version",
]
