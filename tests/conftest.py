"""Shared fixtures: one real MNIST preparation per test session."""

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


@pytest.fixture(autouse=True)
def _data_root_env(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point every default data root at the session's prepared one."""
    monkeypatch.setenv("MLSCALE_DATA_ROOT", str(data_root))
