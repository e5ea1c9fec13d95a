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
from mlscale.registry import load_settings, models_frame
from mlscale.scaling import (
    family_saturation,
    frontier_holders,
    locate_regimes,
    parameter_efficiency,
    select_law,
    smoothed,
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
    assert code == 1 and err.startswith("Error: no runs with params") and err.count("\n") == 1


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
    with pytest.raises(MlscaleError, match="frontier of 4 or more parameter counts"):
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
    # LOWESS windows of 5 points round the sharp kink at 2e4: the crossing lands at 1.2e4.
    assert regimes.saturated_from is not None and 1e4 <= regimes.saturated_from <= 1e5
    assert [regimes.regime(n) for n in (1e3, 1e6)] == ["small", "large"]
    assert regimes.frontier["N"].max() == pytest.approx(1e6)


def test_smoothing_widens_its_window_where_lowess_is_undefined() -> None:
    from mlscale.scaling import saturation_point

    n = np.array([4157.0, 15738, 61706, 244362, 547978])  # LeNet-5's widths 0.25 to 3
    accuracy = np.array([0.36, 0.76, 0.84, 0.90, 0.92])
    assert saturation_point(n, accuracy, frac=2 / 3).curve["smoothed"].isna().any()
    curve = smoothed(n, accuracy)
    assert not curve["smoothed"].isna().any()
    assert curve["smoothed"].iloc[-1] > curve["smoothed"].iloc[0]


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
