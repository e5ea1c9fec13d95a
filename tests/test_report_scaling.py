"""`mlscale report scaling` on a real registry (a 5 x 5 LeNet-5 grid and two VGG runs),
opened in headless Chromium; the study's pieces on synthetic data with known answers.

Set MLSCALE_SCREENSHOT_DIR to keep the screenshot (the README's comes from here).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _chromium import chromium, needs_chromium, screenshot
from _cli import run_main
from click.testing import CliRunner
from mlflow import MlflowClient

from mlscale.cli import cli
from mlscale.errors import MlscaleError
from mlscale.markdown import markdown_table
from mlscale.registry import load_settings, models_frame
from mlscale.report._scaling import _select_law
from mlscale.report._scaling_page import _regime_text, _saturation_table
from mlscale.scaling import (
    family_saturation,
    frontier_holders,
    locate_regimes,
    middle_regime,
    parameter_efficiency,
    saturation_point,
    select_law,
)


@pytest.fixture(scope="module")
def report(lenet_grid_store: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("scaling")
    result = CliRunner().invoke(cli, ["report", "scaling", "--out", str(out), "--tracking-uri",
                                      lenet_grid_store, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_every_family_is_fitted_or_says_why_not(report: dict, lenet_grid_store: str) -> None:
    frame = models_frame(load_settings(lenet_grid_store))
    assert report["runs"] == len(frame)
    assert set(report["families"]) == {"lenet5", "vgg_mini"}
    lenet = report["families"]["lenet5"]
    for law, exponent in (("n", "alpha"), ("d", "beta"), ("nd", "alpha"), ("nd", "beta")):
        fit = lenet["fits"][law]
        assert fit["params"][exponent]["value"] > 0
        assert 0 < fit["goodness"]["r2_log"] <= 1
    joint = lenet["fits"]["nd"]  # 25 runs: finite intervals (the 5-run slices have none)
    for name in ("alpha", "beta"):
        value = joint["params"][name]
        assert value["lower"] < value["value"] < value["upper"], name
    alpha, beta = joint["params"]["alpha"]["value"], joint["params"]["beta"]["value"]
    row = next(r for r in report["exponents"] if r["family"] == "lenet5")
    assert row["a"]["value"] == pytest.approx(beta / (alpha + beta))
    assert row["a"]["lower"] < row["a"]["value"] < row["a"]["upper"]
    assert joint["extrapolation"]["held_out_points"] >= 1
    assert lenet["law_selection"]["preferred"] in {"power", "log", "exponential"}
    vgg = report["families"]["vgg_mini"]  # two runs: shown, with the reason
    assert all("not fitted" in vgg["fits"][law]["error"] for law in ("n", "d", "nd"))
    assert "not compared" in vgg["law_selection"]["error"]
    page = Path(report["html"]).read_text()
    markdown = Path(report["markdown"]).read_text()
    for text in ("Exponents across families", "Saturation and regimes", "Compute frontier",
                 "Parameter efficiency", "Law selection", "vgg_mini", "not fitted",
                 "a = beta/(alpha+beta)", "AIC", "FLOPs = 2 x MACs",
                 "At equal parameters, vgg_mini against lenet5:"):
        assert text in page and text in markdown, text


def test_the_cross_family_numbers_follow_the_runs(report: dict, lenet_grid_store: str) -> None:
    frame = models_frame(load_settings(lenet_grid_store))
    for decade in report["frontier"]["decades"]:
        within = frame[frame["train_flops"] < decade["to_flops"]]
        best = within.loc[within["test_loss"].idxmin()]
        assert decade["loss"] == pytest.approx(best["test_loss"])
        assert decade["loss_family"] == best["arch"]
        assert decade["accuracy"] == pytest.approx(within["test_accuracy"].max())
    assert len(report["frontier"]["decades"]) >= 2
    comparisons = {(e["family"], e["cost"]) for e in report["efficiency"]}
    assert comparisons == {("vgg_mini", "N"), ("vgg_mini", "C")}
    lenet = frame[frame["arch"] == "lenet5"]
    for entry in report["efficiency"]:
        assert entry["base_best_accuracy"] == pytest.approx(lenet["test_accuracy"].max())
        assert (entry["overlap"] is None) == (entry["note"] is not None)
    regimes = report["regimes"]
    assert "rule" in regimes and regimes["params_range"][0] == frame["params"].min()
    assert "model sizes at one data size (samples seen); the most at any data size is 2" in (
        report["families"]["vgg_mini"]["law_selection"]["error"])


def _markdown_tables(markdown: str) -> list[list[str]]:
    """Every table of a Markdown page: its consecutive lines that start with a pipe."""
    tables: list[list[str]] = []
    previous = ""
    for line in markdown.splitlines():
        if line.startswith("|"):
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append(line)
        previous = line
    return tables


def _cells(row: str) -> int:
    """GFM's cell count of a table row: pipes not escaped with a backslash, less one."""
    import re

    return len(re.findall(r"(?<!\\)\|", row)) - 1


def test_every_markdown_table_has_as_many_cells_as_its_separator(report: dict) -> None:
    """An unescaped '|err|' in a header made 12 header cells for 10 separator cells, and
    markdown-it rendered no table at all."""
    from markdown_it import MarkdownIt

    markdown = Path(report["markdown"]).read_text()
    tables = _markdown_tables(markdown)
    assert len(tables) >= 6  # exponents, saturation, frontier, efficiency, laws, per family
    for table in tables:
        assert set(table[1]) <= {"|", "-"}, table[:2]
        columns = table[1].count("---")
        assert [_cells(row) for row in table] == [columns] * len(table), table[0]
    rendered = MarkdownIt("commonmark").enable("table").render(markdown)
    assert rendered.count("<table>") == len(tables)
    assert "<th>extrapolation |err|</th>" in rendered


def test_a_pipe_in_a_header_or_a_line_break_stays_in_its_cell() -> None:
    table = markdown_table(["a", "x |err|"], [["1", "p|q\nr"]])
    assert table.splitlines() == ["| a | x \\|err\\| |", "|---|---|", "| 1 | p\\|q r |"]
    assert [_cells(row) for row in table.splitlines()] == [2, 2, 2]


def test_the_page_is_self_contained_and_logged(report: dict, lenet_grid_store: str) -> None:
    page = Path(report["html"]).read_text()
    markdown = Path(report["markdown"]).read_text()
    plots = [Path(p) for p in report["plots"]]
    assert len(plots) == 3 + 5  # saturation, frontier, efficiency; LeNet-5's five fit plots
    assert page.count("data:image/png;base64,") == len(plots) and 'src="http' not in page
    for plot in plots:
        assert plot.stat().st_size > 5_000
        assert f"]({plot.relative_to(Path(report['html']).parent).as_posix()})" in markdown
    client = MlflowClient(lenet_grid_store)
    run = client.get_run(report["mlflow_run_id"])
    assert run.data.tags["mlscale.kind"] == "scaling-report"
    assert run.data.metrics["runs"] == report["runs"]
    assert "lenet5_alpha" in run.data.metrics
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "scaling_report")}
    assert {"scaling_report/scaling_report.html", "scaling_report/scaling_report.md"} <= logged


@needs_chromium
def test_the_report_renders_in_chromium(report: dict, tmp_path: Path) -> None:
    from matplotlib.image import imread

    url = Path(report["html"]).resolve().as_uri()
    dom = chromium(url, tmp_path / "chromium", "--dump-dom")
    assert "Scaling: how each family scales" in dom and dom.count("<img") == len(report["plots"])
    shots = Path(os.environ.get("MLSCALE_SCREENSHOT_DIR", tmp_path))
    shot = shots / "scaling-report.png"
    screenshot(url, tmp_path / "chromium", shot, size="1300,2200")
    pixels = (imread(shot)[..., :3] * 255).round().astype(int)
    # the plots drew: matplotlib's first colour (#1f77b4, LeNet-5's points) is on screen
    blue = np.all(np.abs(pixels - [31, 119, 180]) <= 12, axis=-1)
    assert blue.sum() > 200


def test_families_filter_and_bad_input(lenet_grid_store: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "report", "scaling", "--out", str(tmp_path / "one"),
                            "--families", "lenet5", "--no-log", "--tracking-uri",
                            lenet_grid_store, "--json")
    answer = json.loads(out)
    assert code == 0 and set(answer["families"]) == {"lenet5"}
    assert answer["mlflow_run_id"] is None and answer["efficiency"] == []
    code, _, err = run_main(capsys, "report", "scaling", "--out", str(tmp_path / "two"),
                            "--families", "lenet5,resnet_mini", "--tracking-uri",
                            lenet_grid_store)
    assert code == 1 and err.startswith("Error: no runs of resnet_mini") and len(
        err.splitlines()) == 1
    code, _, err = run_main(capsys, "report", "scaling", "--out", str(tmp_path / "three"),
                            "--dataset", "fashion-mnist", "--tracking-uri", lenet_grid_store)
    assert code == 1 and err.startswith("Error: the registry has no models for dataset "
                                        "'fashion-mnist'; it holds models of mnist ("), err


def test_an_experiment_gives_its_finished_runs(lenet_grid_store: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, "report", "scaling", "--experiment", "mlscale-mnist",
                              "--out", str(tmp_path), "--no-log", "--tracking-uri",
                              lenet_grid_store)
    assert code == 0, err
    assert "lenet5: alpha" in out and "scaling report of 27 runs" in out


def test_an_empty_registry_is_a_one_line_error(fresh_store: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from mlscale.registry import client, load_settings

    client(load_settings(fresh_store))  # an existing store with nothing in it
    code, _, err = run_main(capsys, "report", "scaling", "--out", str(tmp_path))
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("Error: the registry has no models for dataset 'mnist'")


LAWS = {"log": lambda n: 2.0 - 0.1 * np.log(n), "power": lambda n: 0.05 + 30 * n**-0.5,
        "exponential": lambda n: 0.1 + np.exp(-n / 3e4)}


@pytest.mark.parametrize("law", sorted(LAWS))
def test_law_selection_prefers_the_law_that_made_the_data(law: str) -> None:
    n = np.logspace(3, 6, 15)
    preferred = [select_law(n, LAWS[law](n) + np.random.default_rng(seed).normal(0, 5e-3, 15)
                            ).preferred for seed in range(10)]
    assert preferred.count(law) >= 9, preferred


def test_law_selection_shares_one_gaussian_likelihood() -> None:
    n = np.logspace(3, 6, 15)
    y = LAWS["power"](n) + np.random.default_rng(0).normal(0, 5e-3, 15)
    selection = select_law(n, y)
    for cand in selection.candidates:
        p = cand.params
        if cand.name == "log":
            curve = p["c"] + p["b"] * np.log(n)
        elif cand.name == "power":
            curve = p["c"] + p["a"] * n ** -p["alpha"]
        else:
            curve = p["c"] + p["a"] * np.exp(-n / p["s"])
        rss = float(((y - curve) ** 2).sum())
        assert cand.llf == pytest.approx(-7.5 * (np.log(2 * np.pi * rss / 15) + 1), rel=1e-6)
        assert cand.aic == pytest.approx(2 * cand.k - 2 * cand.llf)
        assert cand.bic == pytest.approx(np.log(15) * cand.k - 2 * cand.llf)
    assert selection.candidates[0].params["alpha"] == pytest.approx(0.5, abs=0.05)
    with pytest.raises(MlscaleError, match="at least 5 distinct"):
        select_law(n[:4], y[:4])


def _sigmoid_runs(points: int = 25) -> pd.DataFrame:
    """Accuracy logistic in log10 N: slow, then 14.5 points per 10x at N = 1e4, then flat."""
    n = np.logspace(2, 8, points)
    accuracy = 0.7 + 0.29 / (1 + np.exp(-2 * (np.log10(n) - 4)))
    return pd.DataFrame({"arch": "a", "N": n, "C": 6e4 * n, "accuracy": accuracy,
                         "loss": 1 - accuracy})


def _crossing(threshold: float) -> float:
    """Exact log10 N past the peak where the gain per 10x, 0.58 s (1 - s), falls to it."""
    from scipy.optimize import brentq

    def gain(log_n: float) -> float:
        s = 1 / (1 + np.exp(-2 * (log_n - 4)))
        return 0.58 * s * (1 - s) - threshold
    return float(brentq(gain, 4, 12))


@pytest.mark.parametrize("points", [13, 25])
def test_regimes_and_saturation_are_located_from_the_data(points: int) -> None:
    runs = _sigmoid_runs(points)
    regimes = locate_regimes(runs)  # exact: small until 10^6.01, saturated from 10^7.18
    assert regimes.small_until is not None and regimes.saturated_from is not None
    assert np.log10(regimes.small_until) == pytest.approx(_crossing(1e-2), abs=0.1)
    assert np.log10(regimes.saturated_from) == pytest.approx(_crossing(1e-3), abs=0.1)
    assert [regimes.regime(n) for n in (1e2, 1e4, 10**6.5, 1e8)] == [
        "small", "small", "middle", "large"]
    saturation = family_saturation(runs)
    assert np.log10(saturation["saturation_params"]) == pytest.approx(_crossing(1e-3), abs=0.1)
    with pytest.raises(MlscaleError, match=r"too few parameter counts on the frontier \(3 "):
        locate_regimes(runs.iloc[:3])
    assert family_saturation(runs.iloc[:3])["reason"].startswith("too few parameter counts")


def test_larger_runs_that_buy_nothing_read_as_saturation() -> None:
    """The main job's shape: accuracy climbs to its best at 2e4 parameters and the larger
    runs (to 1e6) fall just short of it. The Pareto front's corners stop at 2e4 and kept
    rising there (no 'large' regime); the frontier's flat tail is the saturation."""
    small = np.logspace(3, 4.3, 6)
    large = np.logspace(4.6, 6, 6)
    runs = pd.DataFrame({"arch": "a", "N": np.concatenate([small, large]),
                         "accuracy": np.concatenate([np.linspace(0.80, 0.985, 6),
                                                     np.full(6, 0.98)])})
    runs["C"], runs["loss"] = 6e4 * runs["N"], 1 - runs["accuracy"]
    regimes = locate_regimes(runs)
    # The frontier turns flat at 2e4: the curve's gain falls to 0 there, so the crossings
    # lie just before that run, with no middle regime to speak of.
    assert regimes.saturated_from is not None and 1.8e4 <= regimes.saturated_from <= 2e4
    assert [regimes.regime(n) for n in (1e3, 1e6)] == ["small", "large"]
    assert regimes.frontier["N"].max() == pytest.approx(1e6)
    assert middle_regime(regimes) == "narrow"
    assert "no middle regime" in _regime_text({"regimes": regimes})


# LeNet-5 at 7 sizes, two of them 19 parameters apart, best test accuracy at each: noisy
# and not monotone. LOWESS's local lines swung to 107% between the measured points.
LENET_SIZES = np.array([4157.0, 15738, 61706, 75545, 115249, 115268, 244362])
NOISY = [0.352, 0.765, 0.913, 0.882, 0.958, 0.95, 0.938]


def _family(accuracy: list[float], sizes: np.ndarray = LENET_SIZES, arch: str = "lenet5"
            ) -> pd.DataFrame:
    return pd.DataFrame({"arch": arch, "N": sizes, "C": 6e4 * sizes, "accuracy": accuracy,
                         "loss": 1.05 - np.asarray(accuracy)})


def _noisy(seed: int, sizes: int) -> list[float]:
    """A saturating accuracy (to 99.5%) with 1.5 points of noise, kept within [0, 1]."""
    log_n = np.linspace(3.5, 6.5, sizes)
    clean = 0.995 - 0.6 * np.exp(-2.5 * (log_n - 3.5))
    noise = np.random.default_rng(seed).normal(0, 0.015, sizes)
    return np.clip(clean + noise, 0, 1).round(4).tolist()


CURVES = [NOISY, [0.369, 0.749, 0.933, 0.888, 0.953, 0.947, 0.953],
          [0.36, 0.76, 0.84, 0.90, 0.92, 0.93, 0.94]] + [_noisy(s, 12) for s in range(4)]


@pytest.mark.parametrize("accuracy", CURVES)
def test_the_saturation_curve_stays_within_the_measured_accuracies(accuracy: list[float]
                                                                    ) -> None:
    sizes = LENET_SIZES if len(accuracy) == 7 else np.logspace(3.5, 6.5, len(accuracy))
    runs = _family(accuracy, sizes)
    saturation = family_saturation(runs)
    curve = saturation["curve"]["smoothed"].to_numpy()
    assert min(accuracy) <= curve.min() and curve.max() <= max(accuracy) <= 1
    assert np.all(np.diff(curve) >= 0)  # no dip between measured points
    regimes = locate_regimes(runs)  # one family: its frontier is the all-family one
    point = saturation["saturation_params"]
    assert point == regimes.saturated_from
    alone = saturation_point(sizes, accuracy)  # the same rule for `mlscale budget`
    assert alone.x == point and alone.curve["smoothed"].to_numpy() == pytest.approx(curve)
    if point is not None:
        assert min(accuracy) <= saturation["saturation_accuracy"] <= max(accuracy)
        assert regimes.regime(point) == "large"
        assert regimes.small_until is not None and regimes.small_until <= point


def test_a_noisy_family_saturates_where_its_frontier_stops_rising() -> None:
    """The frontier of NOISY rises to 95.8% at the two sizes 19 apart (one size here) and
    stays: the family saturates just before them, and the page says there is no middle
    regime rather than giving two adjacent numbers as if one lay between them."""
    runs = _family(NOISY)
    saturation = family_saturation(runs)
    assert 1.1e5 < saturation["saturation_params"] <= 115268
    assert saturation["saturation_accuracy"] <= 0.958
    regimes = locate_regimes(runs)
    study = {"regimes": regimes, "families": {"lenet5": {"saturation": saturation}}}
    text = _regime_text(study)
    assert "no middle regime" in text and "within" in text
    assert _saturation_table(study)[1][0][4] == "large"


def test_a_family_that_saturates_before_the_others_says_where_the_frontier_stands() -> None:
    flat = _family([0.90, 0.95, 0.96, 0.96, 0.96], np.logspace(3, 5, 5), "flat")
    rising = _family([0.90, 0.92, 0.94, 0.96, 0.98, 0.99], np.logspace(3.2, 6.5, 6), "rising")
    runs = pd.concat([flat, rising], ignore_index=True)
    regimes = locate_regimes(runs)
    study = {"regimes": regimes, "families": {name: {"saturation": family_saturation(group)}
                                              for name, group in runs.groupby("arch")}}
    rows = {row[0]: row for row in _saturation_table(study)[1]}
    assert rows["flat"][4] == "small: the all-family frontier still gains there"
    assert rows["rising"][3] == "not saturated in its range"
    assert "not saturated within the data" in _regime_text(study)


def test_law_selection_says_what_it_counts() -> None:
    """LeNet-5 at 7 model sizes, each trained on its own data size: the laws of N need 5
    sizes at one data size, and the message said 'got 1' as if the family had one size."""
    runs = _family(NOISY).assign(D=6e4 * np.arange(1, 8))
    error = _select_law(runs)["error"]
    assert error == ("not compared: needs at least 5 model sizes at one data size (samples "
                     "seen); the most at any data size is 1 (the family has 7 model sizes "
                     "over 7 data sizes)")
    one_data_size = _family(NOISY).assign(D=6e4)
    assert _select_law(one_data_size)["nobs"] == 7


def test_parameter_efficiency_in_points_and_in_parameters() -> None:
    n = np.logspace(4, 6, 9)
    base = pd.DataFrame({"arch": "lenet5", "N": n, "C": n, "accuracy": 0.9 + 0.02 * np.log10(n)})
    other = base.assign(arch="vgg_mini", N=10 * n, C=10 * n)  # needs 10x for the same
    far = base.assign(arch="tiny", N=n / 1e4, C=n / 1e4, accuracy=0.5)
    rows = parameter_efficiency(pd.concat([base, other, far]), "lenet5")
    vgg = next(r for r in rows if r["family"] == "vgg_mini" and r["cost"] == "N")
    assert vgg["mean_gap_points"] == pytest.approx(2.0) and vgg["overlap"] == pytest.approx(
        [1e5, 1e6])
    assert vgg["match_ratio"] == pytest.approx(10.0)
    tiny = next(r for r in rows if r["family"] == "tiny" and r["cost"] == "C")
    assert tiny["overlap"] is None and tiny["note"].startswith("no overlap")
    assert tiny["other_cost_to_match"] is None
    with pytest.raises(MlscaleError, match="no lenet5 runs"):
        parameter_efficiency(other, "lenet5")


def test_the_compute_frontier_names_each_decades_holder() -> None:
    runs = pd.DataFrame({"arch": ["a", "b", "a", "b"], "C": [2e9, 5e9, 3e10, 4e11],
                         "loss": [0.5, 0.4, 0.3, 0.35], "accuracy": [0.8, 0.85, 0.9, 0.92],
                         "N": 1.0})
    frontier = frontier_holders(runs)
    holders = [(d["to_flops"], d["loss_family"], d["accuracy_family"])
               for d in frontier["decades"]]
    assert holders == [(1e10, "b", "b"), (1e11, "a", "a"), (1e12, "a", "b")]
    assert frontier["loss_front"]["C"].tolist() == [2e9, 5e9, 3e10]


def test_the_summary_prints_a_family_whose_exponents_are_not_all_estimated(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A joint law with an allocation exponent but no alpha or beta (they ran off) once
    crashed the command after its report was written."""
    from mlscale.report._scaling import ScalingReportResult, print_summary

    study = {"runs": 12, "exponents": [{
        "family": "resnet_mini", "alpha": {"value": None}, "beta": None,
        "a": {"value": 0.5, "lower": None, "upper": 0.9}}], "families": {}}
    print_summary(ScalingReportResult(tmp_path / "r.html", tmp_path / "r.md", [], study, None))
    assert capsys.readouterr().out.splitlines()[0] == (
        "resnet_mini: alpha n/a, beta n/a, a 0.500 [n/a, 0.900]")


def test_regimes_flat_from_merged_smallest_sizes_say_saturated_throughout() -> None:
    """Two smallest sizes 4% apart merge into one knot at their mean: a crossing there is
    the first run, not a sliver of 'small' below 1,020 parameters."""
    from mlscale.report._scaling_page import _regime_text
    from mlscale.scaling import locate_regimes, middle_regime

    points = pd.DataFrame({"arch": ["a"] * 5, "N": [1000, 1040, 5000, 2e4, 1e5],
                           "accuracy": [0.9] * 5, "C": [1.0] * 5, "loss": [0.3] * 5})
    regimes = locate_regimes(points)
    assert middle_regime(regimes) == "none"
    assert _regime_text({"regimes": regimes}).endswith(
        "Here: large (saturated) over the whole range (1,000-100,000 parameters): 10x more "
        "parameters never buy 0.1 points.")
