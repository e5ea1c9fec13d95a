"""Shared fixtures: one real MNIST preparation and one real MLflow store per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlscale.data import Splits, load, prepare


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root shared by the session, with MNIST prepared from the offline source."""
    root = tmp_path_factory.mktemp("data")
    prepare("mnist", root)
    return root


@pytest.fixture(scope="session")
def mnist(data_root: Path) -> Splits:
    return load("mnist", data_root)


@pytest.fixture(scope="session")
def session_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite MLflow store shared by tests that only add to it."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _isolated_stores(data_root: Path, session_store: str, monkeypatch: pytest.MonkeyPatch
                     ) -> None:
    """Point the default data root and MLflow store at the session's, never the project's."""
    monkeypatch.setenv("MLSCALE_DATA_ROOT", str(data_root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", session_store)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)


@pytest.fixture
def fresh_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An empty SQLite MLflow store of the test's own."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
