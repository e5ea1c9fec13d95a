"""``mlscale search --workers N``: N worker processes on one study, on this machine.

A convenience over starting the command N times: each child gets cores / N torch threads
(through ``OMP_NUM_THREADS``), SIGTERM and SIGINT are passed on to every child, and the
exit status is the first non-zero one among them. The storage URL (it may hold a password)
reaches the children as ``$MLSCALE_STORAGE``, not in arguments every local user sees.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import FrameType

__all__ = ["run_workers"]


def threads_per_worker(workers: int) -> int:
    """The cores this process may use, shared out evenly (at least one each)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // workers)


def _storage_to_environment(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """``args`` without ``--storage URL``, and the environment that passes URL instead
    (``mlscale search`` reads ``--storage`` from ``$MLSCALE_STORAGE``)."""
    kept: list[str] = []
    env: dict[str, str] = {}
    rest = iter(args)
    for arg in rest:
        if arg == "--storage":
            env["MLSCALE_STORAGE"] = next(rest, "")
        elif arg.startswith("--storage="):
            env["MLSCALE_STORAGE"] = arg.partition("=")[2]
        else:
            kept.append(arg)
    return kept, env


def run_workers(workers: int, search_args: list[str], capture: bool) -> tuple[int, list[str]]:
    """Run ``mlscale search SEARCH_ARGS`` in ``workers`` processes and wait for them all.

    Returns the exit status and, with ``capture``, each child's stdout.
    """
    threads = str(threads_per_worker(workers))
    search_args, storage = _storage_to_environment(search_args)
    env = os.environ | storage | {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    command = [sys.executable, "-m", "mlscale", "search", *search_args]
    children = [subprocess.Popen(command, env=env, text=True,
                                 stdout=subprocess.PIPE if capture else None)
                for _ in range(workers)]

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        outputs = [child.communicate()[0] or "" for child in children]
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    # A child killed by a signal before it could handle it: 128 + the signal, as a shell says.
    codes = [128 - child.returncode if child.returncode < 0 else child.returncode
             for child in children]
    failed = [code for code in codes if code != 0]
    return (failed[0] if failed else 0), outputs
