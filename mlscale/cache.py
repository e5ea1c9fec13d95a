"""mlscale's cache folder, and JSON written to it atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["cache_dir", "write_json"]


def cache_dir() -> Path:
    """``$MLSCALE_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlscale``, else ``~/.cache/mlscale``."""
    if env := os.environ.get("MLSCALE_CACHE_DIR"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlscale"


def write_json(path: Path, payload: Any) -> None:
    """Write atomically; a cache that cannot be written is only a slower next answer."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_suffix(f".{os.getpid()}.tmp")
        scratch.write_text(json.dumps(payload))
        scratch.replace(path)
    except OSError:
        pass
