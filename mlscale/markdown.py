"""Markdown tables: the one writer the latency table and both reports use."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["markdown_cell", "markdown_table"]


def markdown_cell(value: str) -> str:
    """``value`` safe inside a table cell: ``|`` escaped and line breaks as spaces (either
    would end the cell or the row).

    >>> markdown_cell("extrapolation |err|")
    'extrapolation \\\\|err\\\\|'
    """
    return " ".join(value.replace("|", "\\|").splitlines())


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table; every cell, headers included, goes through
    ``markdown_cell``.

    >>> print(markdown_table(["a", "|b|"], [["1", "x|y"]]))
    | a | \\|b\\| |
    |---|---|
    | 1 | x\\|y |
    """
    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(markdown_cell(value) for value in values) + " |"

    return "\n".join([line(headers), "|" + "---|" * len(headers), *(line(row) for row in rows)])
