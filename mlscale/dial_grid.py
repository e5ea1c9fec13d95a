"""A family's dial grid (widths x depths) with each point's params and FLOPs, measured
once and cached: the configurations the budget advisor chooses among.

Measuring is single-threaded Python dispatch (FlopCounterMode), so uncached grids are
measured by one child process per core (``measure_grids``).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from mlscale.cache import cache_dir, write_json
from mlscale.errors import MlscaleError
from mlscale.names import arch_name

__all__ = ["WIDTH_POINTS", "Bounds", "measure_grids", "measured_grid"]

WIDTH_POINTS = 11  # widths per depth in a family's dial grid (log-spaced over its range)
Bounds = tuple[tuple[float, float], tuple[int, int]]  # (width low, high), (depth low, high)
def measured_grid(family: str, input_shape: tuple[int, int, int],
                  on_status: Callable[[str], None] = lambda _: None, num_classes: int = 10,
                  open_bounds: Bounds | None = None
                  ) -> pd.DataFrame:
    """Params and FLOPs of ``family`` over its dial grid, measured (``measure.cost_of``).

    A user family whose ranges are open is measured over ``open_bounds`` (the dials its
    registered runs span). Cached per family, keyed by the family's and the measurement's
    source code.
    """
    from mlscale import measure

    path, bounds = _grid_cache(family, input_shape, num_classes, open_bounds)
    if path.is_file():
        with contextlib.suppress(OSError, ValueError):  # a damaged file is measured again
            return pd.DataFrame(json.loads(path.read_text()))
    (w_lo, w_hi), (d_lo, d_hi) = bounds
    widths = sorted({float(f"{w:.3g}") for w in np.geomspace(w_lo, w_hi, WIDTH_POINTS)})
    rows = []
    on_status(f"measuring {family}'s dial grid ({len(widths) * (d_hi - d_lo + 1)} "
              "configurations; cached)")
    for depth in range(d_lo, d_hi + 1):
        for width in widths:
            cost = measure.cost_of(family, width, depth, input_shape, num_classes)
            rows.append({"width": width, "depth": depth, "params": cost.params,
                         "flops_per_sample": cost.flops_per_sample,
                         "train_flops_per_sample": cost.train_flops_per_sample})
    grid = pd.DataFrame(rows)
    write_json(path, grid.to_dict("list"))
    return grid


def _grid_cache(family: str, input_shape: tuple[int, int, int], num_classes: int,
                open_bounds: Bounds | None
                ) -> tuple[Path, Bounds]:
    """Where ``family``'s measured grid is cached, and the dial bounds it spans."""
    from mlscale import measure
    from mlscale.models import model_spec

    spec = model_spec(family)
    builder = inspect.unwrap(spec.builder)
    try:
        source = inspect.getsource(inspect.getmodule(builder) or builder)
    except (OSError, TypeError):  # a user family without source files: keyed by its name
        source = f"{builder.__module__}:{builder.__qualname__}"
    bounds = (spec.width_range, spec.depth_range)
    if not spec.bounded:
        if open_bounds is None:
            raise MlscaleError(f"family {family} declares no dial ranges and has no runs to "
                               "take them from")
        bounds = open_bounds
    key = hashlib.sha256((source + inspect.getsource(measure) + f"{WIDTH_POINTS}{input_shape}"
                          f"{num_classes}{bounds}").encode()).hexdigest()[:16]
    return cache_dir() / f"zoo-{arch_name(family)}-{key}.json", bounds


_GRID_CHILD = ("import json, sys; from mlscale.dial_grid import measure_unclaimed; "
               "measure_unclaimed(*json.loads(sys.argv[1]))")


def measure_grids(jobs: dict[str, Bounds], input_shape: tuple[int, int, int],
                  num_classes: int, on_status: Callable[[str], None]) -> None:
    """Fill the grid cache for ``jobs`` (family -> the dials its runs span) with one child
    process per core. Measuring is single-threaded Python dispatch (FlopCounterMode), so
    two processes on two cores take about 0.6x the time (61 s against 100 s for the six
    families' grids, benchmarks/dial_grid.py). Children, not multiprocessing:
    its spawned workers re-import the caller's main module. What a child cannot measure
    (a family registered only in this process) is left to ``measured_grid`` here."""
    import subprocess
    import sys

    missing = [family for family, bounds in jobs.items()
               if not _grid_cache(family, input_shape, num_classes, bounds)[0].is_file()]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = min(len(missing), cores or 1)
    if workers < 2:
        return
    on_status(f"measuring the dial grids of {', '.join(missing)} ({workers} processes; cached)")
    payload = json.dumps([[[f, jobs[f]] for f in missing], input_shape, num_classes])
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    children = [subprocess.Popen([sys.executable, "-c", _GRID_CHILD, payload], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for _ in range(workers)]
    for child in children:
        child.wait()


def measure_unclaimed(jobs: list[tuple[str, Bounds]], input_shape: list[int],
                      num_classes: int) -> None:
    """A grid child: measure each family of ``jobs`` that no other child has claimed."""
    shape = (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
    for family, (width, depth) in jobs:
        bounds: Bounds = ((float(width[0]), float(width[1])), (int(depth[0]), int(depth[1])))
        try:
            path, _ = _grid_cache(family, shape, num_classes, bounds)
            claim = path.with_suffix(".claim")
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except (FileExistsError, MlscaleError):  # another child's, or not buildable here
            continue
        try:
            measured_grid(family, shape, num_classes=num_classes, open_bounds=bounds)
        except Exception:  # whatever a child cannot measure, the parent measures itself
            pass
        finally:
            claim.unlink(missing_ok=True)
