"""Reports over the registry, as a self-contained HTML page and its Markdown twin, each
logged to MLflow (experiment ``mlscale-reports``): the public front of the package.

- ``latency_report``: what each registered model costs to serve (``_latency``);
- ``scaling_report``: the lineage study, every family's laws side by side (``_scaling``,
  its plots and pages in ``_scaling_page``);
- ``_page``: the page, table, figure and MLflow helpers both share.
"""

from __future__ import annotations

from mlscale.report._latency import ReportResult, latency_report, select_models
from mlscale.report._page import REPORT_EXPERIMENT
from mlscale.report._scaling import (
    ScalingReportResult,
    print_summary,
    scaling_points,
    scaling_report,
    scaling_study,
)

__all__ = ["REPORT_EXPERIMENT", "ReportResult", "ScalingReportResult", "latency_report",
           "print_summary", "scaling_points", "scaling_report", "scaling_study",
           "select_models"]
