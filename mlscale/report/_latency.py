"""The deployment-latency report: what each registered model costs to serve.

One self-contained HTML page (plots embedded) and a Markdown twin (plots beside it):
per model, ONNX Runtime latency percentiles and throughput at every batch size measured,
torch eager against ONNX Runtime at batch 1; across models, accuracy against latency and
against FLOPs with the Pareto front, and per family cost-efficiency fronts (accuracy
against training FLOPs, parameters and latency); the machine, threads and versions the
latency was measured with. The figures come from each version's cost card and its run's
``latency.json``; the report is logged to MLflow as an artifact.

>>> result = latency_report(load_settings(), "reports/latency")  # doctest: +SKIP
>>> result.html.name                                             # doctest: +SKIP
'latency_report.html'
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlscale.cost_card import CostCard
from mlscale.errors import MlscaleError
from mlscale.markdown import markdown_table
from mlscale.report._page import (
    REPORT_EXPERIMENT,
    cell,
    html_page,
    html_table,
    img_tag,
    log_report,
    out_folder,
    plot_style,
    save_figure,
)

if TYPE_CHECKING:
    import pandas as pd

    from mlscale.latency import LatencyReport
    from mlscale.registry import MlflowSettings

__all__ = ["REPORT_EXPERIMENT", "ReportResult", "latency_report", "select_models"]

HTML_NAME, MARKDOWN_NAME = "latency_report.html", "latency_report.md"
SUMMARY_COLUMNS = [  # (header, column, format): the cost card's figures, then the report's
    ("model", "model_uri", "{}"), ("family", "arch", "{}"),
    *map(CostCard.column, ("params", "flops_per_sample", "test_accuracy", "latency_p50_ms",
                           "latency_p90_ms", "latency_p99_ms")),
    ("torch p50 ms", "torch_p50_ms", "{:.4f}"), ("ORT speed-up", "ort_speedup", "{:.2f}x"),
    ("best samples/s", "best_throughput", "{:,.0f}"), ("timed on", "timing", "{}"),
]


@dataclass(frozen=True)
class ReportResult:
    """Where the report went and what it covers."""

    html: Path
    markdown: Path
    plots: list[Path]
    models: int
    mlflow_run_id: str | None


def select_models(frame: pd.DataFrame, models: Sequence[str] | None) -> pd.DataFrame:
    """Rows of ``models_frame`` named by ``models``: a registered model name (every
    version), ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``. None: every row."""
    if not models:
        return frame
    import pandas as pd

    from mlscale.registry import ModelRef

    keep = pd.Series(False, index=frame.index)
    for spec in models:
        ref = ModelRef.parse(spec)
        match = frame["name"] == ref.name
        if ref.alias is not None:
            match &= frame["aliases"].str.split(",").apply(
                lambda aliases, alias=ref.alias: alias in aliases)
        elif ref.version is not None:
            match &= frame["version"].astype(str) == ref.version
        if not match.any():
            raise MlscaleError(f"no registered model version matches {spec!r}")
        keep |= match
    return frame[keep]


def _load_latency(frame: pd.DataFrame) -> dict[str, LatencyReport]:
    """Each version's latency.json (by model URI); versions without one are left out."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from mlscale.latency import LatencyReport

    reports = {}
    for row in frame.itertuples():
        try:
            payload = mlflow.artifacts.load_dict(f"runs:/{row.run_id}/latency.json")
            reports[str(row.model_uri)] = LatencyReport.from_dict(payload)
        except (MlflowException, OSError, ValueError, KeyError, TypeError):
            continue  # no or an unreadable latency.json: the cost card still shows
    return reports


def _summary_frame(frame: pd.DataFrame, reports: dict[str, LatencyReport]) -> pd.DataFrame:
    """The cost card plus torch eager batch-1 p50 and ONNX Runtime's speed-up over it."""
    from mlscale.scaling import pareto_front

    torch_p50 = {uri: r.torch_batch1.p50_ms for uri, r in reports.items() if r.torch_batch1}
    best = {uri: max(s.throughput for s in r.onnx) for uri, r in reports.items() if r.onnx}
    summary = frame.assign(torch_p50_ms=frame["model_uri"].map(torch_p50),
                           best_throughput=frame["model_uri"].map(best))
    summary["ort_speedup"] = summary["torch_p50_ms"] / summary["latency_p50_ms"]
    busy = {uri for uri, r in reports.items() if r.busy_warning}
    summary["timing"] = summary["model_uri"].map(
        lambda uri: "a busy machine" if uri in busy else "")
    timed = summary.dropna(subset=["latency_p90_ms", "test_accuracy"])
    front = pareto_front(timed, "latency_p90_ms", "test_accuracy", minimize_value=False)
    summary["on_front"] = summary.index.isin(front.index)
    return summary.sort_values("latency_p90_ms").reset_index(drop=True)


def _plots(summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Accuracy against latency and against FLOPs (overall Pareto front), and per-family
    cost-efficiency fronts."""
    from matplotlib.figure import Figure

    from mlscale.scaling import efficiency_fronts, pareto_front

    families = sorted(summary["arch"].dropna().unique())
    colours = {family: f"C{i % 10}" for i, family in enumerate(families)}
    paths = []
    for cost, label, name in (("latency_p90_ms", "p90 latency at batch 1 (ms)",
                               "accuracy_vs_latency.png"),
                              ("flops_per_sample", "forward FLOPs per sample",
                               "accuracy_vs_flops.png")):
        figure = Figure(figsize=(6.4, 4.4))
        axes = figure.subplots()
        usable = summary.dropna(subset=[cost, "test_accuracy"])
        for family in families:
            rows = usable[usable["arch"] == family]
            axes.scatter(rows[cost], rows["test_accuracy"], s=18, color=colours[family],
                         label=family, alpha=0.8)
        if not usable.empty:
            front = pareto_front(usable, cost, "test_accuracy", minimize_value=False)
            axes.step(front[cost], front["test_accuracy"], where="post", color="black",
                      linewidth=1, label="Pareto front")
        axes.set(xscale="log", xlabel=label, ylabel="test accuracy",
                 title=f"accuracy vs {label.split(' (')[0]}")
        axes.legend(fontsize=7)
        paths.append(save_figure(figure, out_dir / name))
    costs = (("train_flops", "training FLOPs"), ("params", "parameters"),
             ("latency_p90_ms", "p90 ms, batch 1"))
    values = (("test_accuracy", "test accuracy", True), ("test_loss", "test loss (nats)", False))
    figure = Figure(figsize=(13, 8))
    grid = figure.subplots(len(values), len(costs), sharey="row")
    for axes_row, (value, value_label, higher_is_better) in zip(grid, values, strict=True):
        fronts = efficiency_fronts(summary, value=value, higher_is_better=higher_is_better)
        for axes, (cost, label) in zip(axes_row, costs, strict=True):
            for family in families:
                rows = summary[summary["arch"] == family]
                axes.scatter(rows[cost], rows[value], s=10, color=colours[family], alpha=0.35)
                front = fronts[(fronts["arch"] == family) & (fronts["cost"] == cost)]
                axes.plot(front["cost_value"], front["value"], marker="o", markersize=3,
                          color=colours[family], label=family)
            axes.set(xscale="log", xlabel=label, yscale="linear" if higher_is_better else "log")
        axes_row[0].set_ylabel(value_label)
    grid[0][0].legend(fontsize=7)
    figure.suptitle("cost-efficiency: each family's Pareto front")
    paths.append(save_figure(figure, out_dir / "cost_efficiency.png"))
    return paths


def _setups(reports: dict[str, LatencyReport]) -> list[str]:
    """Each distinct measuring set-up (CPU, threads, versions) and how many models used it."""
    counts: dict[str, int] = {}
    for report in reports.values():
        versions = ", ".join(f"{name} {v}" for name, v in sorted(report.versions.items()))
        key = f"{report.cpu}, {report.threads} thread(s); {versions}"
        counts[key] = counts.get(key, 0) + 1
    return [f"{key} ({n} model{'s' if n > 1 else ''})" for key, n in counts.items()]


def _write(summary: pd.DataFrame, reports: dict[str, LatencyReport], plots: list[Path],
           out_dir: Path, tracking_uri: str) -> tuple[Path, Path]:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    headers = [h for h, _, _ in SUMMARY_COLUMNS] + ["front"]
    rows = [[cell(row[col], fmt) for _, col, fmt in SUMMARY_COLUMNS]
            + ["yes" if row["on_front"] else ""] for _, row in summary.iterrows()]
    intro = (f"{len(summary)} registered model versions from {tracking_uri}, fastest first "
             f"(p50/p90/p99 at batch 1 in ONNX Runtime; 'front': on the accuracy-latency "
             f"Pareto front; FLOPs = 2 x MACs). Generated {stamp}.")
    if busy := int((summary["timing"] != "").sum()):
        intro += (f" {busy} of them {'was' if busy == 1 else 'were'} timed on a busy machine "
                  "(a timing spread past 20x; 'timed on' says which): their latencies and "
                  "speed-ups overstate what they cost to serve; time them again with "
                  "`mlscale latency MODEL`.")
    setups = _setups(reports)
    images = [img_tag(p) for p in plots]
    figures = f"<div class='pair'>{''.join(images[:2])}</div>{''.join(images[2:])}"
    details = "".join(
        f"<details{' open' if i == 0 else ''}><summary>{html.escape(uri)}</summary>"
        + (f"<p class='note'><b>Warning:</b> {html.escape(report.busy_warning)}</p>"
           if report.busy_warning else "")
        + html_table(*report.table())
        + f"<p class='note'>{html.escape(report.cpu)}, {report.threads} thread(s)</p></details>"
        for i, (uri, report) in enumerate(reports.items()))
    page = html_page("mlscale latency report", (
            f"<h1>Deployment latency: what each model costs to serve</h1>"
            f"<p class='note'>{html.escape(intro)}</p>"
            f"<h2>Models</h2>"
            + html_table(headers, rows, ["front" if f else "" for f in summary["on_front"]])
            + f"<h2>Accuracy against cost</h2>{figures}"
            f"<h2>Latency at every batch size</h2>{details}"
            f"<h2>Measured on</h2><ul>"
            + "".join(f"<li>{html.escape(s)}</li>" for s in setups) + "</ul>"))
    html_path = out_dir / HTML_NAME
    html_path.write_text(page, encoding="utf-8")
    per_model = "\n\n".join(
        f"### {uri}\n\n" + report.markdown()
        for uri, report in reports.items())
    markdown = "\n\n".join([
        "# Deployment latency: what each model costs to serve", intro, "## Models",
        markdown_table(headers, rows), "## Accuracy against cost",
        "\n".join(f"![{p.stem}]({p.name})" for p in plots),
        "## Latency at every batch size", per_model, "## Measured on",
        "\n".join(f"- {s}" for s in setups)]) + "\n"
    md_path = out_dir / MARKDOWN_NAME
    md_path.write_text(markdown, encoding="utf-8")
    return html_path, md_path


def latency_report(settings: MlflowSettings, out_dir: str | Path, *,
                   models: Sequence[str] | None = None, dataset: str | None = None,
                   log: bool = True) -> ReportResult:
    """Write the report for the registered versions (all, or ``models``) into ``out_dir``
    and, with ``log``, record it as an MLflow run in the ``mlscale-reports`` experiment."""
    from mlscale.registry import client, models_frame, no_models_message

    out = out_folder(out_dir)
    frame = select_models(models_frame(settings, dataset=dataset), models)
    if frame.empty:
        raise MlscaleError(no_models_message(settings, dataset) if dataset else
                           f"no registered models in {settings.tracking_uri}; train or "
                           "search first")
    client(settings)  # points mlflow at the stores before artifacts are read
    reports = _load_latency(frame)
    summary = _summary_frame(frame, reports)
    with plot_style():
        plots = _plots(summary, out)
    try:
        html_path, md_path = _write(summary, reports, plots, out, settings.tracking_uri)
    except OSError as error:
        raise MlscaleError(f"cannot write the report to {out}: {error.strerror}") from None
    run_id = log_report(settings, [html_path, md_path, *plots], kind="latency-report",
                        metrics={"models": len(summary)}) if log else None
    return ReportResult(html_path, md_path, plots, len(summary), run_id)

