"""`mlscale fit --csv` on small public-style scaling tables written here: isoFLOP
budgets (Hoffmann et al. 2022's design), a compute frontier, repeated epochs
(Muennighoff et al. 2023), other separators; each run through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from _cli import run_main

from mlscale.scaling import compute_frontier, effective_data, fit_law

BUDGETS = (1e15, 1e16, 1e17, 1e18)
SIZES = np.logspace(6, 9, 7)


def _isoflop_table(budgets: tuple[float, ...] = BUDGETS, seed: int = 0) -> pd.DataFrame:
    """isoFLOP budgets of seven model sizes each (C = 6 N D), on a Chinchilla-like law."""
    rng = np.random.default_rng(seed)
    rows = []
    for budget in budgets:
        for n in SIZES:
            tokens = budget / (6 * n)
            loss = (1.7 + 400 / n**0.34 + 1400 / tokens**0.28) * np.exp(rng.normal(0, 0.005))
            rows.append({"params": float(f"{n:.4g}"), "tokens": float(f"{tokens:.4g}"),
                         "flops": budget, "loss": round(loss, 5)})
    return pd.DataFrame(rows)


def _fit(capsys: pytest.CaptureFixture[str], csv: Path, *args: str) -> dict[str, Any]:
    code, out, err = run_main(capsys, "fit", "--csv", str(csv), *args, "--json")
    assert code == 0, err

    def refuse(constant: str) -> None:
        raise AssertionError(f"not strict JSON: {constant}")

    return dict(json.loads(out, parse_constant=refuse))


def test_the_extrapolation_check_holds_out_whole_budgets_of_computed_compute(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Given N and D only, C = 6 N D (rounded N and D: C differs in its last digits within
    a budget); 20% of 28 runs is 5.6, but the top budget's 7 runs are held out together."""
    csv = tmp_path / "isoflops.csv"
    _isoflop_table().to_csv(csv, index=False)
    report = _fit(capsys, csv, "--n-col", "params", "--d-col", "tokens", "--law", "nd")
    check = report["extrapolation"]
    assert check["axis"] == "C" and report["derived"] == {"C": "C = 6 N D"}
    assert (check["fit_points"], check["held_out_points"]) == (21, 7)
    assert check["held_out_from"] == pytest.approx(1e18, rel=1e-3)
    # the same check with the budget given as a column
    given = _fit(capsys, csv, "--n-col", "params", "--c-col", "flops", "--law", "nd")
    assert given["extrapolation"]["held_out_points"] == 7
    assert given["extrapolation"]["mean_abs_pct_error"] == pytest.approx(
        check["mean_abs_pct_error"], rel=0.05)


def test_the_c_law_is_fitted_to_the_frontier_by_library_and_cli_alike(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    table = _isoflop_table(tuple(np.logspace(14, 18, 9)))
    frontier = compute_frontier(table, "flops", "loss")
    assert len(frontier) < len(table) / 2
    assert frontier["loss"].is_monotonic_decreasing
    library = fit_law(table, "c", columns={"C": "flops"})
    assert library.nobs == len(frontier)
    pd.testing.assert_series_equal(library.params, fit_law(frontier, "c",
                                                           columns={"C": "flops"}).params)
    assert 1.0 < library.params["L_inf"] < table["loss"].min()  # a floor, not 1e-9
    csv = tmp_path / "runs.csv"
    table.to_csv(csv, index=False)
    report = _fit(capsys, csv, "--n-col", "params", "--c-col", "flops", "--law", "c")
    assert report["nobs"] == library.nobs
    assert report["L_inf"]["value"] == pytest.approx(library.params["L_inf"], rel=1e-6)


@pytest.mark.parametrize("separator", [";", "\t", "|"])
def test_other_separators_are_detected(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                       separator: str) -> None:
    table = _isoflop_table()
    comma, other = tmp_path / "comma.csv", tmp_path / "other.csv"
    table.to_csv(comma, index=False)
    table.to_csv(other, index=False, sep=separator)
    args = ("--n-col", "params", "--c-col", "flops", "--law", "nd")
    assert _fit(capsys, other, *args)["params"] == _fit(capsys, comma, *args)["params"]


def test_json_stays_strict_when_intervals_are_not_finite(capsys: pytest.CaptureFixture[str],
                                                         tmp_path: Path) -> None:
    """Five runs whose fitted floor vanishes (L_inf ~ 0, the main job's lenet5): L_inf is
    pinned and has no interval, which prints as null, never as a bare NaN; the other
    parameters keep theirs."""
    csv = tmp_path / "runs.csv"
    csv.write_text("params,loss\n4358,0.2258\n7836,0.2164\n16860,0.1720\n33754,0.1286\n"
                   "61706,0.1147\n")
    report = _fit(capsys, csv, "--n-col", "params", "--law", "n")  # parse_constant unused
    assert report["L_inf"]["value"] < 1e-6
    assert report["L_inf"]["bse"] is None and report["L_inf"]["lower"] is None
    assert report["alpha"]["lower"] < report["alpha"]["value"] < report["alpha"]["upper"]


def test_unique_data_column_fits_effective_data(capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    """Runs repeating 2,000 unique samples up to 64 times: with --u-col the fit uses D'
    and recovers beta; without it the repeats look like new data."""
    n, epochs = (g.ravel() for g in np.meshgrid(np.logspace(4, 6, 5), [0.5, 1, 4, 16, 64]))
    unique = 2000.0
    seen = epochs * unique
    loss = 0.05 + 30 * n**-0.5 + 40 * effective_data(seen, unique) ** -0.6
    csv = tmp_path / "repeats.csv"
    pd.DataFrame({"params": n, "samples": seen, "unique_samples": unique,
                  "loss": loss}).to_csv(csv, index=False)
    args = ("--n-col", "params", "--d-col", "samples", "--law", "nd")
    with_u = _fit(capsys, csv, *args, "--u-col", "unique_samples")
    without = _fit(capsys, csv, *args)
    assert with_u["effective_data"] and not without["effective_data"]
    assert with_u["beta"]["value"] == pytest.approx(0.6, rel=0.02)
    assert abs(without["beta"]["value"] / 0.6 - 1) > 0.15


def test_a_floor_above_observed_losses_is_a_warning(capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path) -> None:
    """Eight runs on L = 2 + 50 N^-0.3 and one far below the rest: the robust fit keeps
    L_inf near 2, above that run, and says so; that run is the largest, so the
    extrapolation check (which holds it out) also finds that the law does not hold there."""
    sizes = np.logspace(5, 9, 8)
    losses = [*(2 + 50 * sizes**-0.3), 1.2]
    csv = tmp_path / "runs.csv"
    pd.DataFrame({"params": [*sizes, 1e9], "loss": losses}).to_csv(csv, index=False)
    report = _fit(capsys, csv, "--n-col", "params", "--law", "n")
    assert report["L_inf"]["value"] > 1.2
    assert len(report["warnings"]) == 2
    assert "lies above the lowest observed loss 1.2" in report["warnings"][0]
    assert report["warnings"][1].startswith("the law does not hold beyond the fitted compute")
    code, out, _ = run_main(capsys, "fit", "--csv", str(csv), "--n-col", "params", "--law", "n")
    assert code == 0 and "warning: the fitted floor L_inf" in out
