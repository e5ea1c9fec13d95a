from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mlscale.errors import MlscaleError
from mlscale.export import export_onnx, ort_session
from mlscale.latency import LatencyReport, LatencyStats, benchmark_onnx
from mlscale.models import get_model


@pytest.fixture(scope="module")
def lenet_onnx() -> tuple[bytes, torch.nn.Module]:
    torch.manual_seed(0)
    model = get_model("lenet5").eval()
    return export_onnx(model, torch.randn(8, 1, 28, 28)).serialized(), model


def test_every_percentile_and_throughput(lenet_onnx: tuple[bytes, torch.nn.Module]) -> None:
    onnx_bytes, model = lenet_onnx
    report = benchmark_onnx(onnx_bytes, (1, 28, 28), batch_sizes=(1, 16), threads=1,
                            iterations=30, seconds=None, torch_model=model)
    assert [s.batch_size for s in report.onnx] == [1, 16]
    for stats in [*report.onnx, report.torch_batch1]:
        assert stats is not None and stats.runs == 30
        assert 0 < stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p95_ms
        assert stats.p95_ms <= stats.p99_ms <= stats.max_ms
        assert stats.min_ms <= stats.mean_ms <= stats.max_ms
        per_run_s = stats.mean_ms / 1e3
        assert stats.throughput == pytest.approx(stats.batch_size / per_run_s, rel=1e-6)
    assert report.threads == 1
    assert {"onnxruntime", "torch"} <= report.versions.keys()
    assert report.cpu


def test_a_time_budget_runs_at_least_ten_times(lenet_onnx: tuple[bytes, torch.nn.Module]
                                               ) -> None:
    report = benchmark_onnx(lenet_onnx[0], (1, 28, 28), batch_sizes=(4,), seconds=0.05)
    assert report.onnx[0].runs >= 10 and report.torch_batch1 is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_sizes": (0,)}, "batch sizes must be positive"),
        ({"threads": 0}, r"threads \(--threads\) must be >= 1"),
        ({"iterations": 5, "seconds": 1.0},
         r"exactly one of iterations \(--iterations\) or seconds \(--seconds\)"),
        ({"iterations": 0, "seconds": None}, r"iterations \(--iterations\) must be >= 1"),
        ({"seconds": -1.0}, r"seconds \(--seconds\) must be positive"),
        ({"seconds": float("inf")}, r"seconds \(--seconds\) must be positive and finite"),
        ({"batch_sizes": (1, 10**9)}, r"batch size 1000000000 needs 2\.92e\+03 GiB"),
    ],
)
def test_bad_settings_are_rejected(lenet_onnx: tuple[bytes, torch.nn.Module],
                                   options: dict[str, object], message: str) -> None:
    with pytest.raises(MlscaleError, match=message):
        benchmark_onnx(lenet_onnx[0], (1, 28, 28), **options)  # type: ignore[arg-type]


def test_cli_times_a_model_with_external_weights_from_any_folder(
        lenet_onnx: tuple[bytes, torch.nn.Module], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow saves ONNX weights as an external-data file beside model.onnx; ONNX Runtime
    must find it from the model's folder, not the working directory."""
    import json

    import onnx
    from click.testing import CliRunner

    from mlscale.cli import cli

    folder = tmp_path / "artifacts"
    folder.mkdir()
    onnx.save_model(onnx.load_from_string(lenet_onnx[0]), str(folder / "model.onnx"),
                    save_as_external_data=True, location="model.onnx.data",
                    size_threshold=0)
    assert (folder / "model.onnx.data").stat().st_size > 200_000  # the weights live there
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = CliRunner().invoke(cli, ["latency", "../artifacts/model.onnx", "--batch-sizes",
                                      "1", "--iterations", "5", "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["onnx"][0]["runs"] == 5


@pytest.mark.parametrize("torch_threads", [1, 2])
def test_the_default_threads_are_torchs_as_the_trainer_uses(
        lenet_onnx: tuple[bytes, torch.nn.Module], monkeypatch: pytest.MonkeyPatch,
        torch_threads: int) -> None:
    """No --threads: the ONNX Runtime session and torch eager run on the threads torch is
    set to in this process (what training ran on), not on every core."""
    import mlscale.latency

    sessions = []

    def recording(model: bytes | str, threads: int = 1) -> object:
        session = ort_session(model, threads)
        sessions.append(session)
        return session

    monkeypatch.setattr(mlscale.latency, "ort_session", recording)
    previous = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        report = benchmark_onnx(lenet_onnx[0], (1, 28, 28), batch_sizes=(1,), iterations=5,
                                seconds=None, torch_model=lenet_onnx[1])
    finally:
        torch.set_num_threads(previous)
    assert report.threads == torch_threads
    assert sessions[0].get_session_options().intra_op_num_threads == torch_threads


def test_omp_num_threads_sets_the_default_in_a_real_process(
        lenet_onnx: tuple[bytes, torch.nn.Module], tmp_path: Path) -> None:
    """OMP_NUM_THREADS=1, as a shared machine sets it: timing runs on one thread too."""
    import json
    import os
    import subprocess
    import sys

    model = tmp_path / "lenet5.onnx"
    model.write_bytes(lenet_onnx[0])
    completed = subprocess.run(
        [sys.executable, "-m", "mlscale", "latency", str(model), "--batch-sizes", "1",
         "--iterations", "5", "--json"],
        capture_output=True, text=True, timeout=300,
        env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["threads"] == 1


def _stats(milliseconds: list[float]) -> LatencyStats:
    import numpy as np

    return LatencyStats.from_seconds(1, np.asarray(milliseconds) / 1e3)


STEADY = [0.24] * 20 + [0.25] * 60 + [0.3] * 20
STALLED_TAIL = [0.24] * 5 + [0.3] * 80 + [56.0] * 15  # p90 ~190x p50
STALLED_MIDDLE = [0.24] * 2 + [40.0] * 98  # p50 ~170x the fastest run


@pytest.mark.parametrize(("onnx", "torch_runs", "busy"), [
    (STEADY, STEADY, None),
    (STEADY, STALLED_TAIL, "torch eager batch 1: p90 56 ms is 187x p50 0.3 ms"),
    (STALLED_MIDDLE, None, "onnxruntime batch 1: p50 40 ms is 167x the fastest run 0.24 ms"),
])
def test_an_absurd_spread_says_the_machine_was_busy(onnx: list[float],
                                                    torch_runs: list[float] | None,
                                                    busy: str | None) -> None:
    report = LatencyReport([_stats(onnx)], None if torch_runs is None else _stats(torch_runs),
                           2, "cpu")
    if busy is None:
        assert report.busy_warning is None
        assert "Warning" not in report.markdown()
        assert report.to_dict()["busy_warning"] is None
        return
    assert report.busy_warning is not None and busy in report.busy_warning
    assert report.busy_warning.startswith("the machine was busy while timing on 2 thread(s)")
    assert "\n" not in report.busy_warning
    assert f"**Warning:** {report.busy_warning}" in report.markdown()
    assert report.to_dict()["busy_warning"] == report.busy_warning
    assert LatencyReport.from_dict(report.to_dict()) == report  # still reads back


def test_the_cli_prints_one_warning_line_for_a_busy_machine(
        lenet_onnx: tuple[bytes, torch.nn.Module], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Real sessions and models; only the clock is a stalled machine's."""
    import numpy as np
    from _cli import run_main

    import mlscale.latency

    monkeypatch.setattr(mlscale.latency, "_time_runs",
                        lambda *args: np.asarray(STALLED_TAIL) / 1e3)
    model = tmp_path / "lenet5.onnx"
    model.write_bytes(lenet_onnx[0])
    code, out, err = run_main(capsys, "latency", str(model), "--batch-sizes", "1",
                              "--iterations", "5", "--threads", "1")
    assert code == 0
    assert err.count("\n") == 1 and err.startswith("Warning: the machine was busy"), err
    assert "| onnxruntime | 1 |" in out and "**Warning:**" in out
