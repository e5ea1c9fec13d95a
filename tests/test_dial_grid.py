"""A family's dial grid: measured by child processes into the cache, as the parent would."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mlscale.dial_grid import _grid_cache, measure_grids, measured_grid

SHAPE = (1, 28, 28)
JOBS = {"lenet5": ((0.1, 8.0), (1, 3)), "vgg_mini": ((0.25, 4.0), (1, 4))}


def test_children_fill_the_cache_with_what_the_parent_measures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSCALE_CACHE_DIR", str(tmp_path / "children"))
    measure_grids(JOBS, SHAPE, 10, lambda _: None)
    for family, bounds in JOBS.items():
        path, _ = _grid_cache(family, SHAPE, 10, bounds)
        assert path.is_file(), f"no child measured {family}"
        assert not path.with_suffix(".claim").exists()
    by_children = {family: measured_grid(family, SHAPE) for family in JOBS}  # from the cache
    monkeypatch.setenv("MLSCALE_CACHE_DIR", str(tmp_path / "parent"))
    for family, grid in by_children.items():
        pd.testing.assert_frame_equal(grid, measured_grid(family, SHAPE), check_dtype=False)


def test_a_family_claimed_by_another_child_is_left_to_the_parent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSCALE_CACHE_DIR", str(tmp_path))
    path, _ = _grid_cache("lenet5", SHAPE, 10, JOBS["lenet5"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".claim").touch()  # a child that died mid-measurement
    measure_grids(JOBS, SHAPE, 10, lambda _: None)
    assert not path.is_file()
    assert _grid_cache("vgg_mini", SHAPE, 10, JOBS["vgg_mini"])[0].is_file()
    assert len(measured_grid("lenet5", SHAPE)) == 33  # 11 widths x 3 depths, measured here
