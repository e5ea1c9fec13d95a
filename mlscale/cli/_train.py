"""``mlscale train``: one model trained, exported, timed and registered."""

from __future__ import annotations

import click

from mlscale.checks import PositiveNumber
from mlscale.cli._base import (
    _plural,
    _prepare_data,
    _print_json,
    _StatusLine,
    cli,
    dataset_option,
    json_option,
    root_option,
    tracking_option,
)


@cli.command("train")
@click.option("--arch", required=True, help="Architecture name (see `mlscale zoo`).")
@click.option("--width", type=float, default=None, help="Width multiplier (default: family's).")
@click.option("--depth", type=int, default=None, help="Depth dial (default: family's).")
@click.option("--epochs", type=click.IntRange(1), default=None,
              help="Passes over the training subset [3].")
@click.option("--max-train-flops", type=PositiveNumber(), default=None,
              help="Stop when this many training FLOPs are spent (instead of --epochs).")
@click.option("--train-size", type=int, default=None,
              help="Stratified training subset size (default: the whole train split).")
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help="Default: 256, less for small subsets (an epoch of at least 32 steps).")
@click.option("--lr", type=PositiveNumber(), default=None,
              help="Peak learning rate (default: the family's, see `mlscale zoo --json`).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto",
              show_default=True, help="auto: bf16 autocast where the hardware has it.")
@click.option("--no-register", is_flag=True, help="Log the MLflow run but register no version.")
@click.option("--latency-seconds", type=PositiveNumber(), default=0.25, show_default=True,
              help="ONNX Runtime timing per batch size (1, 32, 256).")
@dataset_option
@root_option
@tracking_option
@json_option
def train_command(arch: str, width: float | None, depth: int | None, epochs: int | None,
                  max_train_flops: float | None, train_size: int | None,
                  batch_size: int | None,
                  lr: float | None, seed: int, device: str, precision: str, no_register: bool,
                  latency_seconds: float, dataset: str, root: str | None,
                  tracking_uri: str | None, as_json: bool) -> None:
    """Train one model, export it to ONNX, time it, log it to MLflow and register it."""
    from mlscale.models import model_spec
    from mlscale.registry import load_settings
    from mlscale.train import EpochMetrics, Progress, TrainConfig, precision_warning
    from mlscale.workflow import train_and_register

    model_spec(arch)  # fail on an unknown name before loading any data
    config = TrainConfig(arch=arch, width=width, depth=depth, dataset=dataset,
                         train_size=train_size, epochs=epochs, max_train_flops=max_train_flops,
                         batch_size=batch_size, lr=lr, seed=seed, device=device,
                         precision=precision, data_root=root)
    config.validate()  # every check before data is prepared or the MLflow store is opened
    if warning := precision_warning(config):
        click.echo(f"Warning: {warning}", err=True)
    _prepare_data(dataset, root)
    settings = load_settings(tracking_uri)
    status = _StatusLine()

    def on_progress(p: Progress) -> None:
        val = f"  val acc {p.last_val.val_accuracy:.2%}" if p.last_val else ""
        status.show(f"step {p.step}/{p.total_steps}  epoch {p.epoch:.2f}  "
                    f"loss {p.train_loss:.4f}{val}")

    def on_epoch(m: EpochMetrics) -> None:
        status.clear()
        if not as_json:
            click.echo(f"epoch {m.epoch:6.2f}  samples {m.samples_seen:>9,}  "
                       f"val loss {m.val_loss:.4f}  val acc {m.val_accuracy:.2%}")

    outcome = train_and_register(config, settings, register=not no_register,
                                 latency_seconds=latency_seconds, on_progress=on_progress,
                                 on_epoch=on_epoch)
    status.clear()
    if busy := outcome.latency.busy_warning:
        click.echo(f"Warning: {busy}", err=True)
    if as_json:
        _print_json(outcome.to_dict())
        return
    result, batch1 = outcome.result, outcome.latency.at_batch(1)
    click.echo(
        f"{result.run_name}: test loss {result.test_loss:.4f} nats, "
        f"test accuracy {result.test_accuracy:.2%} (error {result.error_rate:.2%})\n"
        f"  {result.params:,} params, {result.samples_seen:,} samples seen, "
        f"{result.train_flops:.3e} training FLOPs (2 x MACs); {result.wall_time_s:.1f} s "
        f"wall, {result.train_time_s:.1f} s in training steps\n"
        f"  ONNX Runtime: p50 {batch1.p50_ms:.3f} ms, p90 {batch1.p90_ms:.3f} ms at batch 1; "
        f"{outcome.latency.largest_batch.throughput:,.0f} samples/s at batch "
        f"{outcome.latency.largest_batch.batch_size} "
        f"({_plural(outcome.latency.threads, 'thread')})\n"
        f"  MLflow run {outcome.run_id}"
        + (f"; registered {outcome.version.model_uri}"
           + (" (champion)" if outcome.version.champion else "") if outcome.version else "")
    )
