"""Where runs and models go: ``mlflow.yaml``, the environment, and local store checks."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mlscale.errors import MlscaleError

CONFIG_ENV = "MLSCALE_MLFLOW_CONFIG"


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


def config_path() -> Path | None:
    """The ``mlflow.yaml`` in force: ``$MLSCALE_MLFLOW_CONFIG``, else the working
    directory's (a user's own project), else mlscale's checkout's (the embedded default)."""
    if env := os.environ.get(CONFIG_ENV):
        return Path(env)
    cwd = Path.cwd() / "mlflow.yaml"
    if cwd.is_file():
        return cwd
    checkout = Path(__file__).resolve().parents[2] / "mlflow.yaml"
    return checkout if checkout.is_file() else None


def config_dir() -> Path:
    """The folder local stores resolve against: the config's, else the working directory."""
    path = config_path()
    return path.parent.resolve() if path is not None else Path.cwd()


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

    path = config_path()
    values: dict[str, Any] = {}
    if path is not None:
        values = load_yaml_file(path, "MLflow settings") or {}
        known = {f.name for f in fields(MlflowSettings)}
        if not isinstance(values, dict) or set(values) - known:
            unknown = sorted(set(values) - known) if isinstance(values, dict) else values
            raise MlscaleError(f"{path}: unknown key(s) {unknown}; known: {sorted(known)}")
    base = config_dir()
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


def masked_url(url: str) -> str:
    """``url`` with its password, if any, as ``***``."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: shown as given
        return url


def check_database_scheme(url: str) -> None:
    """A one-line error for ``postgres://`` (Heroku's and psql's spelling), which
    SQLAlchemy does not know; it names PostgreSQL ``postgresql://``."""
    if url.startswith("postgres://"):
        raise MlscaleError(f"{masked_url(url)}: SQLAlchemy names PostgreSQL postgresql://, "
                           "not postgres://")


def check_uri_scheme(uri: str) -> None:
    """A one-line error for a tracking URI without a scheme (a path or a typo)."""
    if "://" not in uri and not uri.startswith("databricks"):
        raise MlscaleError(f"malformed tracking URI '{uri}': expected a scheme such as "
                           "sqlite:///path.db, http://host:port or file:///dir")
