"""The budget advisor's dial grids: measured serially in one process against one child
process per core (``mlscale.dial_grid.measure_grids``), in the same run, each arm on an
empty cache of its own. Measuring is single-threaded Python dispatch (FlopCounterMode on
uninitialised models), so the children should approach cores x.

    python benchmarks/dial_grid.py
    python benchmarks/dial_grid.py --families lenet5 vgg_mini
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from mlscale.dial_grid import measure_grids, measured_grid
from mlscale.models import model_spec

from _common import machine

ZOO = ("lenet5", "alexnet_mini", "vgg_mini", "inception_mini", "resnet_mini",
       "efficientnet_mini")
MNIST = (1, 28, 28)


def _timed(arm: str, families: list[str]) -> float:
    """Seconds to fill an empty grid cache for ``families`` by ``arm``."""
    with tempfile.TemporaryDirectory() as cache:
        os.environ["MLSCALE_CACHE_DIR"] = cache
        started = time.perf_counter()
        if arm == "serial":
            for family in families:
                measured_grid(family, MNIST)
        else:
            jobs = {f: (model_spec(f).width_range, model_spec(f).depth_range) for f in families}
            measure_grids(jobs, MNIST, 10, on_status=lambda _: None)
            for family in families:  # all cached now: this only reads them back
                measured_grid(family, MNIST)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(ZOO))
    args = parser.parse_args()
    print(machine())
    serial = _timed("serial", args.families)
    children = _timed("children", args.families)
    cores = len(os.sched_getaffinity(0))
    print(f"dial grids of {', '.join(args.families)}: serial {serial:.1f} s, "
          f"{cores} children {children:.1f} s, ratio {serial / children:.2f}x")


if __name__ == "__main__":
    main()
