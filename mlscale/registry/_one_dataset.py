"""One dataset per experiment and per registered model.

A user source is named after its file's or folder's stem (``npz:a/data.npz`` and
``npz:b/data.npz`` are both ``npz-data``), so two different datasets could share runs, a
champion, fits and budget answers. Each run and version of a user source carries the
data's content fingerprint; a run of other data is refused before it starts. The
fingerprint, not the path, is the identity: a moved or copied folder is the same data, a
file rewritten in place is not. Runs registered before fingerprints were recorded carry
none and are not compared.
"""

from __future__ import annotations

from mlscale.errors import MlscaleError
from mlscale.names import dataset_name
from mlscale.registry._settings import MlflowSettings
from mlscale.registry._store import client, mlflow_errors

DATASET_FINGERPRINT = "dataset_fingerprint"  # a tag on runs and versions of user sources
DATASET_SOURCE = "dataset_source"  # where the files were: npz:/abs/path, imagefolder:..., ...


def check_one_dataset(settings: MlflowSettings, experiment: tuple[str, str],
                      model_name: str | None, source: str, fingerprint: str) -> None:
    """Refuse to add a run of ``source`` to the experiment ``(id, name)``, or a version to
    ``model_name`` (None: nothing is registered), that holds runs of other data."""
    if not fingerprint:  # a built-in dataset: its name is its identity
        return
    mlflow_client = client(settings)
    other = f"tags.{DATASET_FINGERPRINT} != '{fingerprint}'"
    with mlflow_errors(settings):
        runs = mlflow_client.search_runs([experiment[0]], other, max_results=1)
        versions = (mlflow_client.search_model_versions(f"name = '{model_name}' AND {other}",
                                                        max_results=1)
                    if model_name is not None else [])
    for holder, tags in ((f"the experiment {experiment[1]}", runs and runs[0].data.tags),
                         (f"the registered model {model_name}", versions and versions[0].tags)):
        if tags:
            raise MlscaleError(
                f"{holder} holds runs of other data named {dataset_name(source)}: "
                f"{tags.get(DATASET_SOURCE, '?')} (content {tags[DATASET_FINGERPRINT]}), not "
                f"{source} (content {fingerprint}); rename the file or folder (the name comes "
                "from its stem), or keep its runs apart in a store of their own (an "
                "mlflow.yaml in the project's folder, or --tracking-uri)")
