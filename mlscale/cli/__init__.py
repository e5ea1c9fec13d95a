"""The ``mlscale`` command line: one click group per domain on a root group.

Heavy libraries are imported inside the commands, so ``mlscale --help`` is instant.
Every error reaches the user as one line on stderr with a non-zero exit.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

# Each command module adds its commands to the root group on import.
from mlscale.cli import _budget, _data, _fit, _registry, _report, _search, _train  # noqa: F401
from mlscale.cli._base import cli
from mlscale.cli._search import _Stopped
from mlscale.cli._servers import servers_group
from mlscale.errors import MlscaleError

__all__ = ["cli", "main"]

cli.add_command(servers_group)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the CLI and turn every error into one line and a non-zero exit."""
    try:
        code = cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Error: aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        click.echo(f"Error: {error.format_message()}", err=True)
        sys.exit(error.exit_code)
    except _Stopped as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(error.exit_code)
    except MlscaleError as error:
        click.echo(f"Error: {_one_line(str(error))}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Error: interrupted", err=True)
        sys.exit(130)
    except Exception as error:  # a defect, not bad input: still one line and a non-zero exit
        click.echo(f"Error: unexpected {type(error).__name__}: {_one_line(str(error))} "
                   "(please report this)", err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "no details"
