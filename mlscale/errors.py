"""The one exception type that reaches users as a one-line message, and the idiom that
turns any other error into one line."""

from __future__ import annotations

__all__ = ["MlscaleError", "first_line"]


class MlscaleError(Exception):
    """Bad input or a missing resource: the CLI prints the message on one line and exits 1."""


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first line of ``error``'s message (its type's name when it has none), cut to
    ``limit`` characters: what a one-line error quotes of an exception raised beneath it.

    >>> first_line(ValueError("bad value\\nmore detail"))
    'bad value'
    >>> first_line(KeyError())
    'KeyError'
    """
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if limit is None else line[:limit]
