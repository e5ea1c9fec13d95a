"""``python -m mlscale`` runs the CLI."""

from mlscale.cli import main

main()
