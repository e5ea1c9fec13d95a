"""Headless Chromium for tests that look at real pages (Debian's chromium package)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="needs Debian's chromium (make test installs it)",
)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                  "--virtual-time-budget=20000"]


def chromium(url: str, user_dir: Path, *extra: str, size: str = "1400,1000") -> str:
    """Load ``url`` and return what Chromium printed (the DOM with ``--dump-dom``)."""
    assert CHROMIUM is not None, "chromium is not installed: run `make setup`"
    completed = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--window-size={size}",
                                f"--user-data-dir={user_dir}", *extra, url],
                               capture_output=True, text=True, timeout=120)
    return completed.stdout


def screenshot(url: str, user_dir: Path, path: Path, size: str = "1400,1000") -> None:
    chromium(url, user_dir, f"--screenshot={path}", size=size)
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
