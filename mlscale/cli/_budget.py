"""``mlscale budget``: what to train for a budget, and how the advice is printed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from mlscale.checks import PositiveNumber
from mlscale.cli._base import (
    _print_json,
    _StatusLine,
    cli,
    dataset_option,
    json_option,
    tracking_option,
)
from mlscale.errors import MlscaleError

if TYPE_CHECKING:
    from mlscale.budget import Advice, Estimate, Option


@cli.command()
@click.option("--flops", type=PositiveNumber(), default=None,
              help="Training budget in FLOPs (FLOPs = 2 x MACs), e.g. 1e15.")
@click.option("--target-accuracy", type=float, default=None,
              help="Instead of --flops: the least budget predicted to reach this accuracy.")
@dataset_option
@click.option("--families", "--arch", "families", default=None,
              help="Comma-separated families to consider (default: every fitted family).")
@click.option("--max-latency-ms", type=PositiveNumber(), default=None,
              help="Only configurations predicted to serve within this p90 (batch 1).")
@click.option("--refresh", is_flag=True, help="Refit even if the registry has not changed.")
@tracking_option
@json_option
def budget(flops: float | None, target_accuracy: float | None, dataset: str,
           families: str | None, max_latency_ms: float | None, refresh: bool,
           tracking_uri: str | None, as_json: bool) -> None:
    """What to train for a FLOPs budget: family, dials, data, and the predicted test loss,
    accuracy and latency with 95% intervals, from scaling laws fitted to the registry."""
    from mlscale.budget import Advisor, check_target
    from mlscale.registry import load_settings

    if (flops is None) == (target_accuracy is None):
        raise MlscaleError("give exactly one of --flops and --target-accuracy")
    if flops is None:  # bad input fails before the registry is read
        check_target(target_accuracy)  # type: ignore[arg-type]
    chosen = [name.strip() for name in families.split(",") if name.strip()] if families else None
    status = _StatusLine()
    try:
        advisor = Advisor.from_registry(load_settings(tracking_uri, create=False), dataset,
                                        refresh=refresh, on_status=status.show)
    finally:
        status.clear()
    if flops is not None:
        advice = advisor.advise(flops, families=chosen, max_latency_ms=max_latency_ms)
    else:
        assert target_accuracy is not None
        advice = advisor.least_flops(target_accuracy, families=chosen,
                                     max_latency_ms=max_latency_ms)
    if as_json:
        _print_json(advice.to_dict())
    else:
        _print_advice(advice)


def _estimate_text(estimate: Estimate | None, fmt: str) -> str:
    if estimate is None:
        return "not predicted"
    text = fmt.format(estimate.value)
    if estimate.lower is not None and estimate.upper is not None:
        text += f" [{fmt.format(estimate.lower)}, {fmt.format(estimate.upper)}]"
    return text


def _option_lines(option: Option, indent: str = "  ") -> list[str]:
    return [
        option.describe(),
        f"{indent}test loss {_estimate_text(option.predicted_test_loss, '{:.4f}')}   "
        f"accuracy {_estimate_text(option.predicted_accuracy, '{:.2%}')}   "
        f"p90 latency {_latency_text(option)}"
        + (f"   training {_duration_text(option.predicted_train_seconds)}"
           f" ({_threads_text(option.train_threads)})" if option.predicted_train_seconds else ""),
    ]


def _threads_text(threads: int | None) -> str:
    return "on a GPU" if threads == 0 else f"{threads} thread{'s' if threads != 1 else ''}"


def _latency_text(option: Option) -> str:
    if option.predicted_latency_p90_ms is None:
        return "not predicted"
    return (f"{_estimate_text(option.predicted_latency_p90_ms, '{:.3g}')} ms"
            + (f" (batch 1, {_threads_text(option.latency_threads)})"
               if option.latency_threads else ""))


def _duration_text(seconds: Estimate) -> str:
    """'2.6 h [1.4 h, 4.9 h]': the estimate and its interval, each in the unit that suits it."""
    text = _duration(seconds.value)
    if seconds.lower is not None and seconds.upper is not None:
        text += f" [{_duration(seconds.lower)}, {_duration(seconds.upper)}]"
    return text


def _duration(seconds: float) -> str:
    """'45 s', '4.4 min', '2.6 h', '3.1 d': two significant digits under ten units."""
    unit, size = next(((u, s) for u, s in (("d", 86400.0), ("h", 3600.0), ("min", 60.0))
                       if seconds >= 2 * s), ("s", 1.0))
    value = seconds / size
    return f"{value:.0f} {unit}" if value >= 10 else f"{value:.2g} {unit}"


def _print_advice(advice: Advice) -> None:
    option = advice.recommendation
    asked = (f"the least budget predicted to reach {advice.target_accuracy:.2%}: "
             if advice.target_accuracy is not None else "")
    fitted = ", ".join(f"{name} ({fit['runs']} runs)" for name, fit in advice.fits.items())
    click.echo(f"Budget: {asked}{advice.budget_flops:.3g} training FLOPs on {advice.dataset} "
               f"(FLOPs = 2 x MACs); fits from {advice.registry['versions']} registered "
               f"models: {fitted}")
    if advice.max_latency_ms is not None:
        click.echo(f"Limit: p90 latency <= {advice.max_latency_ms:g} ms at batch 1")
    _, second = _option_lines(option)
    click.echo(advice.headline())
    click.echo(f"  predicted (95% intervals): {second.strip()}")
    near = advice.nearest_registered_model
    click.echo(f"  nearest registered model: {near['model_uri']} ({near['run_name']}: "
               f"{near['params']:,.0f} params, {near['train_flops']:.3g} FLOPs, "
               f"test accuracy {near['test_accuracy']:.2%}, loss {near['test_loss']:.4f})")
    click.echo(f"  train it: {advice.train_command}")
    if advice.verdict is not None and len(advice.verdict.ranking) > 1:
        click.echo("Ranking (predicted test loss, accuracy): " + "; ".join(
            f"{i}. {r.family} {r.predicted_test_loss:.4f}, {r.predicted_accuracy:.2%}"
            + ("" if r.ranked else " (weak fit)")
            for i, r in enumerate(advice.verdict.ranking, 1)))
        click.echo(f"Verdict: {advice.verdict.sentence()}")
    if advice.alternatives:
        click.echo("Alternatives:")
        for alt in advice.alternatives:
            first, second = _option_lines(alt.option, "    ")
            click.echo(f"  {alt.kind} ({alt.why}): {first}")
            click.echo(second)
    if advice.warnings:
        click.echo("Warnings:")
        for warning in advice.warnings:
            click.echo(f"  - {warning}")
    skipped = advice.registry["families_without_fit"]
    if skipped:
        click.echo("Not fitted: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
