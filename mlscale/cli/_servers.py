"""``mlscale servers up|down|status``: the throwaway PostgreSQL and MLflow server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from mlscale.servers import Servers

dir_option = click.option(
    "--dir", "folder", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Where the servers keep their data and logs (default: servers/ in the checkout).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


def _exports(servers: Servers) -> str:
    return (f"export MLFLOW_TRACKING_URI={servers.tracking_uri}\n"
            f"export MLSCALE_STORAGE={servers.optuna_storage}")


@click.group("servers")
def servers_group() -> None:
    """Start, stop or show a local PostgreSQL and MLflow server for many workers (127.0.0.1)."""


@servers_group.command("up")
@click.option("--mlflow-workers", type=click.IntRange(1, 16), default=2, show_default=True,
              help="mlflow server's web workers.")
@dir_option
@json_option
def servers_up(mlflow_workers: int, folder: Path | None, as_json: bool) -> None:
    """Start both (or whichever is not running) and print the two URLs to export."""
    from mlscale.servers import up

    servers = up(folder, mlflow_workers)
    if as_json:
        click.echo(json.dumps(servers.to_dict(), indent=2))
        return
    click.echo(f"PostgreSQL on 127.0.0.1:{servers.postgres_port} (pid {servers.postgres_pid}), "
               f"MLflow server at {servers.tracking_uri} (pid {servers.mlflow_pid}); data in "
               f"{servers.folder}. For every worker:", err=True)
    click.echo(_exports(servers))


@servers_group.command("down")
@dir_option
@json_option
def servers_down(folder: Path | None, as_json: bool) -> None:
    """Stop both by PID; their data stays for the next `up`."""
    from mlscale.servers import down

    servers = down(folder)
    if as_json:
        click.echo(json.dumps(servers.to_dict() if servers else None, indent=2))
        return
    click.echo("stopped PostgreSQL and the MLflow server (data kept)" if servers
               else "no servers were set up here")


@servers_group.command("status")
@dir_option
@json_option
def servers_status(folder: Path | None, as_json: bool) -> None:
    """Say which of the two runs, and where."""
    from mlscale.servers import status

    servers = status(folder)
    if as_json:
        click.echo(json.dumps(servers.to_dict() if servers else None, indent=2))
        return
    if servers is None:
        click.echo("no servers set up here (mlscale servers up)")
        return
    for name, pid, where in (("PostgreSQL", servers.postgres_pid,
                              f"127.0.0.1:{servers.postgres_port}"),
                             ("MLflow server", servers.mlflow_pid, servers.tracking_uri)):
        click.echo(f"{name}: " + (f"running (pid {pid}) at {where}" if pid else "stopped"))
    if servers.postgres_pid and servers.mlflow_pid:
        click.echo(_exports(servers))
