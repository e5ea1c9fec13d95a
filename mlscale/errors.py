"""The one exception type that reaches users as a one-line message."""

from __future__ import annotations

__all__ = ["MlscaleError"]


class MlscaleError(Exception):
    """Bad input or a missing resource: the CLI prints the message on one line and exits 1."""
