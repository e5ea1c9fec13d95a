"""`mlscale fit` on the Chinchilla reference data and on real registered MNIST runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from mlscale.cli import cli
from mlscale.errors import MlscaleError
from mlscale.scaling import fit_points, points_from_csv

CHINCHILLA = Path(__file__).resolve().parents[2] / "shared" / "data" / \
    "chinchilla_hoffmann2022_fig4.csv"
needs_chinchilla = pytest.mark.skipif(not CHINCHILLA.is_file(), reason="no ../shared/data")


@needs_chinchilla
def test_the_cli_reproduces_epochs_chinchilla_fit_with_plots(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, [
        "fit", "--csv", str(CHINCHILLA), "--n-col", "Model Size", "--c-col", "Training FLOP",
        "--loss-col", "loss", "--law", "nd", "--drop-top", "5", "--plot", str(tmp_path),
        "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    published = {"E": 1.817, "alpha": 0.3478, "beta": 0.3658}
    for name, value in published.items():
        assert report[name]["value"] == pytest.approx(value, rel=0.02)
        assert report[name]["lower"] < report[name]["value"] < report[name]["upper"]
    assert report["compute_optimal"]["a"] == pytest.approx(0.513, abs=0.02)
    assert report["nobs"] == 240
    assert report["extrapolation"]["axis"] == "C"
    assert report["extrapolation"]["mean_abs_pct_error"] < 5
    assert sorted(Path(p).name for p in report["plots"]) == [
        "fit_nd_D.png", "fit_nd_N.png", "isoflops.png"]
    for path in report["plots"]:
        assert Path(path).stat().st_size > 10_000


def test_fits_of_registered_runs_are_logged_to_mlflow(lenet_grid_store: str) -> None:
    experiment = "mlscale-mnist"
    for law, names in (("n", {"L_inf", "A", "alpha"}), ("d", {"L_inf", "B", "beta"}),
                       ("nd", {"E", "A", "B", "alpha", "beta"})):
        result = CliRunner().invoke(cli, ["fit", "--experiment", experiment, "--arch", "lenet5",
                                          "--law", law, "--tracking-uri", lenet_grid_store,
                                          "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        assert set(report["params"]) == names
        assert report["nobs"] == (25 if law == "nd" else 5)
        run = MlflowClient(lenet_grid_store).get_run(report["mlflow_run_id"])
        assert run.data.tags["mlscale.kind"] == "scaling-fit"
        assert run.data.params["law"] == law
    # the d-law: more data lowers the loss
    assert report["params"]["beta"]["value"] > 0
    text = CliRunner().invoke(cli, ["fit", "--experiment", experiment, "--arch", "lenet5",
                                    "--law", "d", "--target", "error_rate", "--tracking-uri",
                                    lenet_grid_store]).output
    assert "L(D) = L_inf + B * D^-beta" in text and "logged to MLflow run" in text


def test_runs_past_one_epoch_are_fitted_on_effective_data(tmp_path: Path) -> None:
    """Data repeated for up to 64 epochs: fitted on D', the law recovers its exponents;
    fitted on raw samples seen, the repeats look like new data and the law is wrong."""
    from mlscale.scaling import effective_data

    n, epochs = (g.ravel() for g in np.meshgrid(np.logspace(4, 6, 5), [0.5, 1, 4, 16, 64]))
    unique = 2000.0
    seen = epochs * unique
    truth = {"E": 0.05, "A": 30.0, "B": 40.0, "alpha": 0.5, "beta": 0.6}
    loss = (truth["E"] + truth["A"] * n ** -truth["alpha"]
            + truth["B"] * effective_data(seen, unique) ** -truth["beta"])
    points = pd.DataFrame({"N": n, "D": seen, "C": 6 * n * seen, "unique": unique,
                           "loss": loss})
    report = fit_points(points, "nd", plot_dir=tmp_path)
    assert report.effective_data and "effective data D'" in report.summary
    for name in ("alpha", "beta"):
        assert report.params[name].value == pytest.approx(truth[name], rel=0.02)
    naive = fit_points(points.drop(columns="unique"), "nd")
    assert not naive.effective_data
    assert abs(naive.params["beta"].value / truth["beta"] - 1) > 0.15
    assert report.extrapolation is not None and naive.extrapolation is not None
    assert (report.extrapolation["mean_abs_pct_error"]
            < naive.extrapolation["mean_abs_pct_error"])


def test_bad_fit_input(tmp_path: Path, fresh_store: str) -> None:
    csv = tmp_path / "runs.csv"
    csv.write_text("N,loss\n1e6,2.0\n1e7,1.5\n1e8,nan\n1e9,1.1\n1e10,1.0\n")
    with pytest.raises(MlscaleError, match=r"'loss' \(--loss-col\) must hold positive "
                       r"finite numbers; not at row 3"):
        fit_points(points_from_csv(csv, n_col="N"), "n")
    with pytest.raises(MlscaleError, match="no column"):
        points_from_csv(csv, n_col="params")
    few = tmp_path / "few.csv"
    few.write_text("N,loss\n1e6,2.0\n1e7,1.5\n")
    with pytest.raises(MlscaleError, match=r"(?i)too few|at least"):
        fit_points(points_from_csv(few, n_col="N"), "n")
    with pytest.raises(MlscaleError, match="the nd-law needs D; give D: --d-col"):
        fit_points(points_from_csv(few, n_col="N"), "nd")
    MlflowClient(fresh_store, fresh_store).create_experiment("empty")
    for args, message in ((["--experiment", "empty"], "has no finished training runs"),
                          (["--experiment", "nowhere"], "no MLflow experiment named"),
                          (["--experiment", "x", "--csv", str(csv)], "exactly one of")):
        result = CliRunner().invoke(cli, ["fit", *args])
        assert result.exit_code != 0
        assert message in str(result.exception)
