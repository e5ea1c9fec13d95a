from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mlscale.errors import MlscaleError
from mlscale.export import export_onnx
from mlscale.latency import benchmark_onnx
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
        ({"threads": 0}, "threads must be >= 1"),
        ({"iterations": 5, "seconds": 1.0}, "exactly one of iterations or seconds"),
        ({"iterations": 0, "seconds": None}, "iterations must be >= 1"),
        ({"seconds": -1.0}, "seconds must be positive"),
        ({"seconds": float("inf")}, "seconds must be positive and finite"),
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
