"""``mlscale servers up|down|status``: the throwaway PostgreSQL and MLflow server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

    servers = up(folder, mlflow_workers, say=lambda line: click.echo(line, err=True))
    if as_json:
        click.echo(json.dumps(servers.to_dict(), indent=2))
        return
    click.echo(f"PostgreSQL on 127.0.0.1:{servers.postgres_port} (pid {servers.postgres_pid}), "
               f"MLflow server at {servers.tracking_uri} (pid {servers.mlflow_pid}); data in "
               f"{servers.folder}. For every worker:", err=True)
    click.echo(_exports(servers))


def _where(folder: Path | None) -> str:
    from mlscale.servers import default_folder

    return str((folder or default_folder()).expanduser().resolve())


@servers_group.command("down")
@dir_option
@json_option
def servers_down(folder: Path | None, as_json: bool) -> None:
    """Stop both by PID; their data stays for the next `up`."""
    from mlscale.servers import down

    stopped = down(folder)
    if as_json:
        click.echo(json.dumps({"folder": _where(folder),
                               "state": "not set up" if stopped is None else "stopped",
                               "stopped": stopped or []}, indent=2))
    elif stopped is None:
        click.echo(f"no servers set up in {_where(folder)}")
    elif stopped:
        click.echo(f"stopped {' and '.join(stopped)} (data kept in {_where(folder)})")
    else:
        click.echo(f"nothing was running in {_where(folder)}")


@servers_group.command("status")
@dir_option
@json_option
def servers_status(folder: Path | None, as_json: bool) -> None:
    """Say which of the two runs, and where."""
    from mlscale.servers import status

    servers = status(folder)
    if servers is None:
        if as_json:
            click.echo(json.dumps({"folder": _where(folder), "state": "not set up",
                                   "postgres_running": False, "mlflow_running": False},
                                  indent=2))
        else:
            click.echo(f"no servers set up in {_where(folder)} (mlscale servers up)")
        return
    payload = servers.to_dict()
    if as_json:
        click.echo(json.dumps(payload, indent=2))
        return
    stale = payload["stale_lock_pid"]
    click.echo("PostgreSQL: " + (
        f"running (pid {servers.postgres_pid}) at 127.0.0.1:{servers.postgres_port}"
        if servers.postgres_pid else
        f"stopped (its lock file names pid {stale}, another program: `up` clears it)"
        if stale else "stopped"))
    click.echo("MLflow server: " + _mlflow_line(servers, payload["mlflow_pids"]))
    if servers.postgres_pid and servers.mlflow_pid:
        click.echo(_exports(servers))


def _mlflow_line(servers: Servers, processes: Any) -> str:
    if not processes:
        return "stopped"
    if servers.mlflow_pid in processes:
        return f"running (pid {servers.mlflow_pid}) at {servers.tracking_uri}"
    return (f"its `mlflow server` process {servers.mlflow_pid} is gone, what it started still "
            f"runs (pids {', '.join(map(str, processes))}) at {servers.tracking_uri}: "
            "`down` stops it, `up` restarts it")
