"""The registry as a table: one row per registered version with its cost card."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from mlscale.cost_card import COST_CARD
from mlscale.registry._settings import MlflowSettings
from mlscale.registry._store import all_pages, client, mlflow_errors

if TYPE_CHECKING:
    import pandas as pd

# Every figure of the cost card, the dials and the batch size its throughput was timed at
# (absent on versions registered before it was recorded) are numbers in a registry row.
NUMERIC_COLUMNS = (*COST_CARD, "width", "depth", "throughput_batch_size")


def models_frame(settings: MlflowSettings, *, dataset: str | None = None,
                 arch: str | None = None) -> pd.DataFrame:
    """One row per registered model version with its cost card, best accuracy first;
    ``dataset`` and ``arch`` keep one dataset's (a source or its registry name) and one
    family's (``module:builder`` or its registry name ``module.builder``) versions."""
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
    # Filters compare registry names (a source's spec or its name, a family as written or
    # as named): what the tags hold, with no data read and no user code imported.
    from mlscale.names import arch_name, dataset_name

    if dataset is not None:
        frame = frame[frame["dataset"] == dataset_name(dataset)]
    if arch is not None:
        frame = frame[frame["arch"].map(arch_name, na_action="ignore") == arch_name(arch)]
    return frame.sort_values(["test_accuracy", "name", "version"],
                             ascending=[False, True, True]).reset_index(drop=True)


def no_models_message(settings: MlflowSettings, dataset: str) -> str:
    """Why a command finds nothing for ``dataset``, naming the datasets the registry does
    hold (a user with only their own data registered would otherwise be told about MNIST)."""
    held = models_frame(settings)["dataset"].value_counts()
    if held.empty:
        return (f"the registry has no models for dataset {dataset!r}; register some first, "
                "e.g. mlscale search pipelines/lenet_scaling.yaml")
    counts = ", ".join(f"{name} ({count} version{'s' if count > 1 else ''})"
                       for name, count in held.items())
    return (f"the registry has no models for dataset {dataset!r}; it holds models of "
            f"{counts}: pass --dataset (a user dataset by its source, e.g. npz:PATH)")


def frame_to_json(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Records with NaN as null and timestamps as ISO strings."""
    return json.loads(frame.to_json(orient="records", date_format="iso"))
