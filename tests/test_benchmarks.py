"""Every benchmark script still imports what it uses from mlscale (a restructuring that
moves or renames a name breaks them silently otherwise: no test runs them whole)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", sorted(p.stem for p in BENCHMARKS.glob("*.py")))
def test_benchmark_imports(script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # how the scripts find _common
    module = importlib.import_module(script)
    assert script == "_common" or callable(getattr(module, "main", None))
    sys.modules.pop(script, None)
