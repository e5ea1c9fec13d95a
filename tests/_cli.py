"""Running the real `mlscale` entry point in-process, as a user's shell would."""

from __future__ import annotations

import pytest

from mlscale.cli import main


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``mlscale ARGS`` (one-line errors included)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err
