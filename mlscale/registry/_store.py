"""The MLflow client on the configured stores, its errors as one line, experiments, paging."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from mlscale.errors import MlscaleError, first_line
from mlscale.registry._settings import (
    MlflowSettings,
    check_database_scheme,
    check_uri_scheme,
    masked_url,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient


@contextlib.contextmanager
def mlflow_errors(settings: MlflowSettings) -> Iterator[None]:
    """Turn MLflow and connection failures into one-line MlscaleErrors."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except MlscaleError:
        raise
    except (MlflowException, OSError, ValueError, SQLAlchemyError) as error:
        raise MlscaleError(f"MLflow store {masked_url(settings.tracking_uri)} failed: "
                           f"{_cause(first_line(error, 2000), settings.tracking_uri)}") from None


def _cause(message: str, uri: str) -> str:
    """A refused or timed-out HTTP connection as its cause and what to check: urllib3's
    retry report (about 400 characters) put the cause past where the line was cut."""
    import re

    found = re.search(r"Failed to establish a new connection: (\[Errno -?\d+\] [^'\")]+)",
                      message) or re.search(r"(Read timed out|Connection refused|"
                                             r"Name or service not known)", message)
    if found is None or not uri.startswith(("http://", "https://")):
        return message[:300]
    return (f"cannot connect ({found.group(1).strip()}); is the server running? "
            "(`mlscale servers status` for servers it started)")


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
    for uri in {settings.tracking_uri, settings.registry_uri or settings.tracking_uri}:
        _check_database_answers(uri)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.registry_uri or settings.tracking_uri)
    with mlflow_errors(settings), _first_opening(settings) as fresh:
        mlflow_client = mlflow.MlflowClient(settings.tracking_uri, settings.registry_uri)
        if fresh:  # open (and migrate) both stores while holding the lock
            mlflow_client.search_experiments(max_results=1)
            mlflow_client.search_registered_models(max_results=1)
        return mlflow_client

_READY_SQLITE_STORES: set[str] = set()
_ANSWERING_DATABASES: set[str] = set()
DATABASE_TIMEOUT_S = 10


def _check_database_answers(uri: str) -> None:
    """A server database store (``postgresql://``, ``mysql://``...) must accept one
    connection, once per process: MLflow retries a refused one with back-off for about
    100 s, logging each try, and then raises SQLAlchemy's error as it is."""
    if "://" not in uri or uri.split("://")[0].split("+")[0] in (
            "sqlite", "file", "http", "https", "databricks") or uri in _ANSWERING_DATABASES:
        return
    import sqlalchemy

    check_database_scheme(uri)
    timeout = {"connect_timeout": DATABASE_TIMEOUT_S} if uri.startswith("postgresql") else {}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=timeout)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as error:  # SQLAlchemy's many URL, driver and connection errors
        raise MlscaleError(f"MLflow store {masked_url(uri)} cannot be reached: "
                           f"{first_line(error, 300)}") from None
    _ANSWERING_DATABASES.add(uri)


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


def all_pages(search: Callable[..., Any], max_results: int) -> list[Any]:
    """Every item of a paged MLflow search."""
    found, token = [], None
    while True:
        page = search(max_results=max_results, page_token=token)
        found += list(page)
        token = page.token
        if not token:
            return found
