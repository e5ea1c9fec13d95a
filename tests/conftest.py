"""Shared fixtures: one real MNIST preparation and one real MLflow store per session."""

from __future__ import annotations

from collections.abc import Iterator
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


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The budget advisor's cache in the session's folder, never the user's (session-wide,
    so that module- and session-scoped fixtures use it too)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLSCALE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="session")
def lenet_grid_store(tmp_path_factory: pytest.TempPathFactory, mnist: Splits) -> str:
    """A store with a real 5 x 5 LeNet-5 grid (width x train size, one epoch each) and two
    VGG runs: enough runs for scaling fits and the budget advisor, and one family short."""
    from mlscale.pipeline import parse_pipeline
    from mlscale.registry import load_settings
    from mlscale.search import run_search

    folder = tmp_path_factory.mktemp("grid")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    common = {"dataset": "mnist", "sampler": "grid", "pruner": "none", "val_size": 500,
              "latency_seconds": 0.01, "evaluations": 1, "budget_flops": 1e12}
    grids = [{"name": "grid", "families": ["lenet5"],
              "search_space": {"width": [0.25, 0.5, 1.0, 2.0, 3.0], "depth": [1],
                               "train_size": [300, 600, 1200, 2400, 4800], "epochs": [1],
                               "lr": [4e-3]}},
             {"name": "vgg", "families": ["vgg_mini"],
              "search_space": {"width": [0.25, 0.5], "depth": [1], "train_size": [600],
                               "epochs": [1], "lr": [4e-3]}}]
    for grid in grids:
        run_search(parse_pipeline(common | grid), load_settings(uri),
                   storage=f"sqlite:///{folder / 'optuna.db'}", data=mnist)
    return uri


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
