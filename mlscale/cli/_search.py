"""``mlscale search``: a pipeline searched under a FLOPs budget, by one or N workers."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from mlscale.checks import PositiveNumber
from mlscale.cli._base import (
    _print_json,
    _StatusLine,
    cli,
    json_option,
    tracking_option,
)
from mlscale.errors import MlscaleError

if TYPE_CHECKING:
    from mlscale._signals import Interrupted
    from mlscale.search import SearchSummary


@cli.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--budget-flops", type=PositiveNumber(), default=None,
              help="Total training FLOPs (overrides the pipeline's budget_flops).")
@click.option("--storage", default=None, envvar="MLSCALE_STORAGE",
              help="Optuna storage URL (default: $MLSCALE_STORAGE, else "
                   "sqlite:///registry/optuna.db).")
@click.option("--study", "study_name", default=None, help="Study name (default: pipeline name).")
@click.option("--heartbeat", type=click.IntRange(1, 3600), default=10, show_default=True,
              help="Seconds between worker heartbeats; a trial silent for twice this "
                   "(at least 10 s) is failed.")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Worker processes on this machine, each with cores / N torch threads.")
# What --workers passes its children: they print their trials, it prints the one summary.
@click.option("--summary/--no-summary", "print_summary", default=True, hidden=True)
@tracking_option
@json_option
def search(pipeline: str, budget_flops: float | None, storage: str | None,
           study_name: str | None, heartbeat: int, workers: int, print_summary: bool,
           tracking_uri: str | None, as_json: bool) -> None:
    """Search the zoo under a FLOPs budget as PIPELINE (a pipelines/*.yaml file) defines.

    Running the same command again resumes the study; start it N times (on N machines,
    with a shared --storage) for N workers.
    """
    from mlscale.pipeline import load_pipeline
    from mlscale.registry import check_database_scheme, load_settings
    from mlscale.search import SearchProgress, run_search
    from mlscale.train import Progress

    spec = load_pipeline(pipeline)
    if budget_flops is not None:
        spec = spec.with_budget(budget_flops)
    if storage is not None:  # before the MLflow store's folder is made
        check_database_scheme(storage)
    settings = load_settings(tracking_uri)
    if workers > 1:
        _search_in_workers(workers, pipeline, budget_flops, storage, study_name, heartbeat,
                           tracking_uri, as_json)
        if not as_json:
            from mlscale.search import study_summary

            _print_search_summary(study_summary(spec, storage=storage, study_name=study_name))
        return
    status = _StatusLine()
    ledger = {"line": f"budget {spec.budget_flops:.3g} FLOPs"}

    def on_training(p: Progress) -> None:
        status.show(f"{ledger['line']} | training: step {p.step}/{p.total_steps}, "
                    f"loss {p.train_loss:.4f}")

    def on_progress(p: SearchProgress) -> None:
        done = sum(p.trials.values())
        states = ", ".join(f"{n} {k.lower()}" for k, n in sorted(p.trials.items()))
        best = f"{p.best_value:.4f}" if p.best_value is not None else "-"
        ledger["line"] = (f"{done} trials ({states}) | FLOPs {p.flops_spent:.3g} / "
                          f"{p.budget_flops:.3g} | best val loss {best}")
        status.clear()
        if not as_json:
            click.echo(p.message)
        status.show(ledger["line"])

    from mlscale._signals import Interrupted, stop_on_signals

    try:
        with stop_on_signals():
            summary = run_search(spec, settings, storage=storage, study_name=study_name,
                                 heartbeat_interval=heartbeat, on_progress=on_progress,
                                 on_training=on_training)
    except Interrupted as stop:
        status.clear()
        raise _Stopped.by_signal(stop) from None
    status.clear()
    if as_json:
        _print_json(summary.to_dict())
    elif print_summary:
        _print_search_summary(summary)


def _search_in_workers(workers: int, pipeline: str, budget_flops: float | None,
                       storage: str | None, study_name: str | None, heartbeat: int,
                       tracking_uri: str | None, as_json: bool) -> None:
    from mlscale._local_workers import run_workers

    args = [pipeline, "--heartbeat", str(heartbeat), "--json" if as_json else "--no-summary"]
    for flag, value in (("--budget-flops", budget_flops), ("--storage", storage),
                        ("--study", study_name), ("--tracking-uri", tracking_uri)):
        if value is not None:
            args += [flag, repr(value) if isinstance(value, float) else value]
    code, outputs = run_workers(workers, args, as_json)
    if as_json:
        _print_json({"workers": [json.loads(out) if out.strip() else None
                                 for out in outputs], "exit_code": code})
    if code:
        raise _Stopped(code, f"a worker of {workers} failed (exit status {code}); running the "
                             "same command again resumes the study")


class _Stopped(MlscaleError):
    """A search stopped (by a signal: 128 + its number) or a worker that did: one line."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    @classmethod
    def by_signal(cls, stop: Interrupted) -> _Stopped:
        return cls(stop.exit_code, f"{stop}: a running trial is FAIL (interrupted) and its "
                                   "run KILLED; run the same command again to resume")


def _print_search_summary(summary: SearchSummary) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    states = ", ".join(f"{n} {k.lower()}" for k, n in sorted(summary.n_trials.items()))
    console.print(f"study {summary.study}: {states or 'no trials'}; spent "
                  f"{summary.flops_spent:.4g} of {summary.budget_flops:.4g} training FLOPs "
                  "(FLOPs = 2 x MACs)" + (f"; stopped: {summary.stop_reason}"
                                         if summary.stop_reason else ""))
    for title, rows in (("best per family", summary.best_per_family),
                        ("Pareto front (val loss vs batch-1 p90 latency)", summary.pareto_front)):
        if not rows:
            continue
        table = Table(title=title)
        for column in ("trial", "model", "val loss", "test acc", "params", "train FLOPs",
                       "p90 ms", "registered"):
            table.add_column(column, justify="left" if column in ("model", "registered")
                             else "right")
        for row in rows:
            m = row.metrics
            table.add_row(str(row.trial), row.run_name or "", _figure(m.val_loss, ".4f"),
                          _figure(m.test_accuracy, ".2%"), _figure(m.params, ",.0f"),
                          _figure(m.train_flops, ".3g"), _figure(m.latency_p90_ms, ".3f"),
                          row.model_uri or "")
        console.print(table)
    if summary.best:
        console.print(f"best: {summary.best.run_name} -> {summary.best.model_uri}")
    console.print(f"plots and summary logged to MLflow run {summary.parent_run_id}; "
                  "browse with `mlscale ui`")


def _figure(value: float | None, spec: str) -> str:
    """``value`` formatted, or "-" where the trial did not measure it."""
    return "-" if value is None else format(value, spec)
