"""What every report shares: the output folder, matplotlib's defaults, figures saved and
embedded as base64 PNG, HTML and Markdown tables, the page shell, and the MLflow run
that records a report's files."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlscale.errors import MlscaleError

if TYPE_CHECKING:
    from mlscale.registry import MlflowSettings

__all__ = ["REPORT_EXPERIMENT", "STYLE", "cell", "html_page", "html_table", "img_tag",
           "log_report", "out_folder", "plot_style", "save_figure"]

REPORT_EXPERIMENT = "mlscale-reports"
STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f3f7} td:first-child,th:first-child{text-align:left}
tr.front td{background:#eef8ee} img{max-width:100%;border:1px solid #ddd;margin:.5em 0}
.pair img{width:49%}
details{margin:.3em 0} summary{cursor:pointer;font-weight:600}
.note{color:#555;font-size:13px}
"""


def out_folder(out_dir: str | Path) -> Path:
    """``out_dir``, created if needed (a one-line error if it cannot be)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MlscaleError(f"cannot write the report to {out}: {error.strerror}") from None
    return out


@contextmanager
def plot_style() -> Iterator[None]:
    """matplotlib's own defaults, not whatever style another library set."""
    import matplotlib.style

    with matplotlib.style.context("default"):
        yield


def save_figure(figure: Any, path: Path) -> Path:
    """Lay out and write a matplotlib ``Figure`` as PNG."""
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=100)
    except OSError as error:
        raise MlscaleError(f"cannot write {path}: {error.strerror}") from None
    return path


def img_tag(path: Path) -> str:
    """An <img> holding the PNG itself, so the page fetches nothing."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}">'


def cell(value: Any, fmt: str) -> str:
    """``value`` formatted, or empty for None and NaN."""
    if value is None or value != value:
        return ""
    return fmt.format(value)


def html_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
               classes: Sequence[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        f"<tr{' class=' + repr(c) if c else ''}>"
        + "".join(f"<td>{html.escape(value)}</td>" for value in row) + "</tr>"
        for row, c in zip(rows, classes or [""] * len(rows), strict=True))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_page(title: str, body: str) -> str:
    """A self-contained page: inline style, no scripts, nothing fetched."""
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            f"{body}</body></html>")


def log_report(settings: MlflowSettings, files: Sequence[Path], *, kind: str,
               metrics: dict[str, float]) -> str:
    """An MLflow run in ``mlscale-reports`` holding the report's own files (under a folder
    named ``kind`` with dashes as underscores) and ``metrics``; returns its id."""
    import mlflow

    from mlscale.registry import client, experiment_id, mlflow_errors

    client(settings)
    with mlflow_errors(settings), mlflow.start_run(
            experiment_id=experiment_id(settings, REPORT_EXPERIMENT), run_name=kind,
            tags={"mlscale.kind": kind}) as run:
        mlflow.log_metrics(metrics)
        for path in files:
            mlflow.log_artifact(str(path), kind.replace("-", "_"))
        return str(run.info.run_id)
