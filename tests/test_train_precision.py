"""Forcing bf16 where the device only emulates it warns, in one line on stderr."""

from __future__ import annotations

from pathlib import Path

import pytest
from _cli import run_main

import mlscale.train._device
from mlscale.train import TrainConfig, precision_warning


@pytest.mark.parametrize("native", [True, False])
def test_only_forced_bf16_without_native_support_warns(monkeypatch: pytest.MonkeyPatch,
                                                       native: bool) -> None:
    monkeypatch.setattr(mlscale.train._device, "bf16_is_native", lambda device: native)
    for precision in ("auto", "fp32"):
        assert precision_warning(TrainConfig(arch="lenet5", precision=precision)) is None
    warning = precision_warning(TrainConfig(arch="lenet5", precision="bf16"))
    if native:
        assert warning is None
    else:
        assert warning is not None and "bf16 is not native on cpu" in warning


def test_train_prints_the_warning_once_on_stderr(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str],
                                                 data_root: Path) -> None:
    monkeypatch.setattr(mlscale.train._device, "bf16_is_native", lambda device: False)
    code, out, err = run_main(capsys, "train", "--arch", "lenet5", "--epochs", "1",
                              "--train-size", "500", "--precision", "bf16", "--no-register",
                              "--latency-seconds", "0.01", "--root", str(data_root), "--json")
    assert code == 0, err
    expected = precision_warning(TrainConfig(arch="lenet5", precision="bf16"))
    assert err.splitlines() == [f"Warning: {expected}"]
    assert '"resolved_precision": "bf16"' in out or '"precision": "bf16"' in out
