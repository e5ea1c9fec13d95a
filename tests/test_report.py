"""`mlscale report latency` on a real registry, opened in a real headless Chromium.

Set MLSCALE_SCREENSHOT_DIR to keep the screenshot (the README's comes from here).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _chromium import chromium, needs_chromium, screenshot
from _cli import run_main
from click.testing import CliRunner
from mlflow import MlflowClient

from mlscale.cli import cli


@pytest.fixture(scope="module")
def report(lenet_grid_store: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("report")
    result = CliRunner().invoke(cli, ["report", "latency", "--out", str(out), "--tracking-uri",
                                      lenet_grid_store, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_the_report_covers_every_model_at_every_batch_size(report: dict[str, object],
                                                           lenet_grid_store: str) -> None:
    client = MlflowClient(lenet_grid_store)
    versions = client.search_model_versions()
    assert report["models"] == len(versions)
    page = Path(str(report["html"])).read_text()
    markdown = Path(str(report["markdown"])).read_text()
    for version in versions:
        uri = f"models:/{version.name}/{version.version}"
        assert uri in page and uri in markdown
    for text in ("torch eager", "onnxruntime", "ORT speed-up", "p99 ms", "samples/s",
                 "Pareto front", "Measured on", "thread(s)", "onnxruntime 1."):
        assert text in page and text in markdown, text
    # every batch size of the latency.json is in the per-model tables
    latency = json.loads(Path(client.download_artifacts(versions[0].run_id, "latency.json"))
                         .read_text())
    batches = {s["batch_size"] for s in latency["onnx"]}
    assert len(batches) >= 2
    for batch in batches:
        assert f"| onnxruntime | {batch} |" in markdown
    # self-contained: the plots are embedded, nothing is fetched
    assert page.count("data:image/png;base64,") == 3 and "src=\"http" not in page
    for plot in report["plots"]:  # type: ignore[attr-defined]
        assert Path(plot).stat().st_size > 10_000 and f"]({Path(plot).name})" in markdown
    run = client.get_run(str(report["mlflow_run_id"]))
    assert run.data.tags["mlscale.kind"] == "latency-report"
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "latency_report")}
    assert {"latency_report/latency_report.html", "latency_report/latency_report.md"} <= logged


@needs_chromium
def test_the_report_renders_in_chromium(report: dict[str, str], tmp_path: Path) -> None:
    url = Path(report["html"]).resolve().as_uri()
    dom = chromium(url, tmp_path / "chromium", "--dump-dom")
    assert "Deployment latency" in dom and "models:/mnist-lenet5/1" in dom
    assert dom.count("<img") == 3
    shots = Path(os.environ.get("MLSCALE_SCREENSHOT_DIR", tmp_path))
    screenshot(url, tmp_path / "chromium", shots / "latency-report.png", size="1300,1500")


def test_model_selection(lenet_grid_store: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, [
        "report", "latency", "--out", str(tmp_path), "--models",
        "models:/mnist-lenet5/1,models:/mnist-lenet5@champion", "--models", "mnist-vgg_mini",
        "--no-log", "--tracking-uri", lenet_grid_store, "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    vgg = len(MlflowClient(lenet_grid_store).search_model_versions("name = 'mnist-vgg_mini'"))
    champion_is_1 = MlflowClient(lenet_grid_store).get_model_version_by_alias(
        "mnist-lenet5", "champion").version == "1"
    assert answer["models"] == vgg + (1 if champion_is_1 else 2)
    assert answer["mlflow_run_id"] is None


@pytest.mark.parametrize(("args", "message"), [
    (["--models", "mnist-transformer"], "no registered model version matches 'mnist-transformer'"),
    (["--models", "models:/mnist-lenet5/999"], "matches 'models:/mnist-lenet5/999'"),
    (["--dataset", "fashion-mnist"],
     "the registry has no models for dataset 'fashion-mnist'; it holds models of mnist"),
])
def test_bad_report_input(capsys: pytest.CaptureFixture[str], lenet_grid_store: str,
                          tmp_path: Path, args: list[str], message: str) -> None:
    code, _, err = run_main(capsys, "report", "latency", "--out", str(tmp_path), *args,
                            "--tracking-uri", lenet_grid_store)
    assert code == 1 and message in err and err.count("\n") == 1, err


def test_an_unwritable_folder_is_a_one_line_error(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path, lenet_grid_store: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_main(capsys, "report", "latency", "--out", str(blocker / "sub"),
                            "--tracking-uri", lenet_grid_store)
    assert code == 1 and "cannot write the report to" in err


def test_a_model_timed_on_a_busy_machine_is_marked(lenet_grid_store: str,
                                                   tmp_path: Path) -> None:
    """One version's torch timing given the spread a busy machine leaves (p50 40 ms where
    its fastest run took 0.24 ms): the report says so in its table, intro and details."""
    import dataclasses

    from mlscale.registry import client, load_settings, models_frame
    from mlscale.report._latency import _load_latency, _summary_frame, _write

    settings = load_settings(lenet_grid_store, create=False)
    frame = models_frame(settings)
    client(settings)
    reports = _load_latency(frame)
    busy_uri, sound = next(iter(reports.items()))
    assert sound.torch_batch1 is not None and sound.busy_warning is None
    reports[busy_uri] = dataclasses.replace(sound, torch_batch1=dataclasses.replace(
        sound.torch_batch1, min_ms=0.24, p50_ms=40.0, p90_ms=56.0))
    summary = _summary_frame(frame, reports)
    assert summary.set_index("model_uri")["timing"].to_dict() == {
        uri: "a busy machine" if uri == busy_uri else "" for uri in summary["model_uri"]}
    page, markdown = (path.read_text() for path in _write(summary, reports, [], tmp_path,
                                                          lenet_grid_store))
    assert "1 of them was timed on a busy machine" in markdown
    assert "torch eager batch 1: p50 40 ms is 167x the fastest run 0.24 ms" in markdown
    assert "torch eager batch 1: p50 40 ms is 167x the fastest run 0.24 ms" in page
