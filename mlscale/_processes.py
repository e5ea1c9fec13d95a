"""What Linux's ``/proc`` says of a process: its command line, environment, working
folder and process group, so that a recorded PID is signalled only while it still is the
process it was (a PID is reused after a crash or a reboot). psutil would do the same; it
is not a dependency, and these few reads are all ``mlscale servers`` needs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["PROC", "alive", "all_pids", "command_line", "environment", "group_members", "has_proc",
           "option_value", "working_dir"]

PROC = Path("/proc")


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's (PostgreSQL as 'postgres')
        return True
    return True


def has_proc() -> bool:
    return (PROC / "self" / "cmdline").is_file()


def command_line(pid: int) -> list[str]:
    """``pid``'s command line; empty when it is gone, a zombie or out of reach."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="surrogateescape") for arg in raw.split(b"\0")[:-1]]


def environment(pid: int) -> dict[str, str]:
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="surrogateescape").partition("=") for item in raw.split(b"\0"))
    return {name: value for name, _, value in pairs if name}


def working_dir(pid: int) -> Path | None:
    try:
        return Path(os.readlink(PROC / str(pid) / "cwd"))
    except OSError:
        return None


def all_pids() -> Iterator[int]:
    with contextlib.suppress(OSError):
        for name in os.listdir(PROC):
            if name.isdigit():
                yield int(name)


def group_members(pgid: int) -> list[int]:
    """The processes whose process group is ``pgid`` (its leader may be gone)."""
    members = []
    for pid in all_pids():
        try:
            fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            members.append(pid)
    return members


def option_value(args: list[str], name: str) -> str | None:
    """The value that follows ``name`` in ``args``."""
    for i, arg in enumerate(args[:-1]):
        if arg == name:
            return args[i + 1]
    return None
