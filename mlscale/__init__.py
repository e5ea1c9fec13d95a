"""mlscale: measure how models scale under a compute budget, then advise."""

from __future__ import annotations

from mlscale.errors import MlscaleError

__all__ = ["MlscaleError", "__version__"]

__version__ = "0.1.0"
