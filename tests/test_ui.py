"""The MLflow UI, started by `mlscale ui`, shows the registry in a real headless Chromium.

Set MLSCALE_SCREENSHOT_DIR to keep the screenshots (the README's come from here).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from _chromium import chromium, needs_chromium, screenshot

from mlscale.registry import load_settings
from mlscale.train import TrainConfig
from mlscale.workflow import train_and_register

pytestmark = needs_chromium


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def ui_url(fresh_store: str, tmp_path: Path) -> Iterator[str]:
    for seed, size in ((0, 400), (1, 1_500)):
        train_and_register(TrainConfig(arch="lenet5", train_size=size, epochs=1, seed=seed,
                                       val_size=500), load_settings(),
                           latency_batch_sizes=(1, 32), latency_seconds=0.02)
    port = _free_port()
    log = (tmp_path / "ui.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "mlscale", "ui", "--port", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlscale ui did not come up: {(tmp_path / 'ui.log').read_text()}")
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_the_ui_shows_registered_models_and_their_cost_cards(ui_url: str,
                                                              tmp_path: Path) -> None:
    models_page = chromium(f"{ui_url}/#/models", tmp_path / "chromium", "--dump-dom")
    assert "mnist-lenet5" in models_page
    log = (tmp_path / "ui.log").read_text()  # the UI says where it is, not its start-up notes
    assert " INFO" not in log and "DeprecationWarning" not in log, log
    version_page = chromium(f"{ui_url}/#/models/mnist-lenet5/versions/2",
                             tmp_path / "chromium", "--dump-dom")
    for tag in ("params", "flops_per_sample", "train_flops", "test_accuracy", "test_loss",
                "latency_p50_ms", "latency_p90_ms", "throughput", "61706"):
        assert tag in version_page, tag
    assert "champion" in version_page
    shots = Path(os.environ.get("MLSCALE_SCREENSHOT_DIR", tmp_path))
    screenshot(f"{ui_url}/#/models/mnist-lenet5", tmp_path / "chromium",
                shots / "ui-models.png")
    screenshot(f"{ui_url}/#/models/mnist-lenet5/versions/2", tmp_path / "chromium",
                shots / "ui-model-version.png")
