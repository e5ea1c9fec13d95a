"""Scaling points from a user's CSV, checked in the user's terms: every error names the
column and the option that chose it (``column 'params' (--n-col)``) and the rows at fault.

The points carry, in ``points.attrs["labels"]``, how to name each role (N, D, C, loss,
unique) in messages, and in ``points.attrs["derived"]`` how D or C were computed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlscale.errors import MlscaleError, first_line

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["label", "points_from_csv"]

ROLE_OPTIONS = {"N": "--n-col", "D": "--d-col", "C": "--c-col", "loss": "--loss-col",
                "unique": "--u-col"}
DEFAULT_K = 6.0  # Chinchilla's training FLOPs per parameter per sample


def label(points: pd.DataFrame, role: str) -> str:
    """How messages name ``role``: the user's column and option, else the role itself."""
    return str(points.attrs.get("labels", {}).get(role, f"column {role!r}"))


SEPARATORS = ",;\t|"


def _separator(path: str | Path) -> str:
    """The file's column separator, sniffed by Python's csv.Sniffer among ``SEPARATORS``
    (comma when the file has one column or the sniffer cannot tell)."""
    import csv

    try:
        with open(path, encoding="utf-8", newline="") as handle:
            sample = handle.read(1 << 16)
    except OSError as error:
        raise MlscaleError(f"cannot read CSV {path}: "
                           f"{error.strerror or type(error).__name__}") from None
    except UnicodeDecodeError as error:
        raise MlscaleError(f"CSV {path} is not UTF-8 text (byte {error.start}); save it as "
                           "UTF-8") from None
    if not sample.strip():
        raise MlscaleError(f"{path}: the file is empty; expected a header row and one row "
                           "per run")
    try:
        return csv.Sniffer().sniff(sample, delimiters=SEPARATORS).delimiter
    except csv.Error:
        return ","


def _read(path: str | Path) -> pd.DataFrame:
    """The CSV, with its separator (comma, semicolon, tab or bar) detected."""
    import pandas as pd

    try:
        raw = pd.read_csv(path, sep=_separator(path))
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise MlscaleError(f"cannot read CSV {path}: {first_line(error)}") from None
    if raw.empty:
        raise MlscaleError(f"{path}: no data rows (only the header {list(raw.columns)})")
    return raw


def _numeric(raw: pd.DataFrame, column: str, what: str, path: str | Path) -> pd.Series:
    """``raw[column]`` as positive finite floats; else the data rows (1 = the first row
    after the header) and values at fault."""
    import pandas as pd

    values = pd.to_numeric(raw[column], errors="coerce").astype(float)
    bad = ~(np.isfinite(values) & (values > 0))
    if bad.any():
        rows = np.flatnonzero(bad.to_numpy())
        shown = ", ".join(f"row {i + 1} ({raw[column].iloc[i]})" for i in rows[:5])
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        raise MlscaleError(f"{path}: {what} must hold positive finite numbers; not at "
                           f"{shown}{more}")
    return values


def points_from_csv(path: str | Path, *, n_col: str | None = None, d_col: str | None = None,
                    c_col: str | None = None, loss_col: str = "loss",
                    u_col: str | None = None, k: float | None = None) -> pd.DataFrame:
    """Read a CSV into the N / D / C / loss (/ unique) columns the fits use.

    Without a D column but with N and C, D = C / (k N); without a C column but with N and
    D, C = k N D (k defaults to 6, Chinchilla's). ``u_col`` holds each run's unique
    samples: runs that repeated their data are fitted on effective data D'.
    """
    import pandas as pd

    if k is not None and not (np.isfinite(k) and k > 0):
        raise MlscaleError(f"--k must be a positive finite number, got {k}")
    raw = _read(path)
    wanted = {"N": n_col, "D": d_col, "C": c_col, "loss": loss_col, "unique": u_col}
    chosen = {role: column for role, column in wanted.items() if column}
    missing = [f"{column!r} ({ROLE_OPTIONS[role]})" for role, column in chosen.items()
               if column not in raw.columns]
    if missing:
        hint = ""
        if len(raw.columns) == 1:
            hint = " (one column: separate columns with commas, semicolons or tabs)"
        raise MlscaleError(f"{path}: no column {', '.join(missing)}; it has "
                           f"{list(raw.columns)}{hint}")
    labels = {role: f"column {column!r} ({ROLE_OPTIONS[role]})"
              for role, column in chosen.items()}
    points = pd.DataFrame({role: _numeric(raw, column, labels[role], path)
                           for role, column in chosen.items()})
    factor = DEFAULT_K if k is None else float(k)
    derived = {}
    if "D" not in points and {"N", "C"} <= set(points.columns):
        points["D"] = points["C"] / (factor * points["N"])
        derived["D"] = f"D = C / ({factor:g} N)"
        labels["D"] = f"D (computed as C / ({factor:g} N) from --c-col and --n-col)"
    if "C" not in points and {"N", "D"} <= set(points.columns):
        points["C"] = factor * points["N"] * points["D"]
        derived["C"] = f"C = {factor:g} N D"
        labels["C"] = f"C (computed as {factor:g} N D from --n-col and --d-col)"
    points.attrs["labels"] = labels
    points.attrs["derived"] = derived
    return points
