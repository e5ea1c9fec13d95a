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


def test_a_degenerate_fit_of_sizes_each_on_its_own_data_is_still_plotted(
        tmp_path: Path) -> None:
    """LeNet-5's 7 sizes, each trained on its own data size: N and D never vary apart, so
    the joint law runs off (alpha ~ 1737) and predicts losses that overflow to inf off the
    runs. The plots autoscaled their loss axis to those and tight_layout raised
    OverflowError; the loss axis now spans the runs' losses."""
    sizes = np.array([4157.0, 15738, 61706, 75545, 115249, 115268, 244362])
    seen = np.array([1e3, 1e4, 3e4, 1.2e5, 2.4e5, 6e5, 1.2e6])
    loss = [0.30745903030977917, 0.41362851451190147, 0.8561921409492559, 0.1809767324978118,
            0.10150447664909623, 0.22437778691748825, 0.31663178411882054]
    points = pd.DataFrame({"N": sizes, "D": seen, "C": 6 * sizes * seen, "unique": seen,
                           "k": 6.0, "loss": loss})
    with np.errstate(all="ignore"):
        report = fit_points(points, "nd", plot_dir=tmp_path)
    assert report.params["alpha"].value > 100  # degenerate, as the runs allow
    assert [Path(p).name for p in report.plots] == ["fit_nd_N.png", "fit_nd_D.png",
                                                    "isoflops.png"]
    assert all(Path(p).stat().st_size > 0 for p in report.plots)


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


def test_an_experiment_of_several_families_is_fitted_family_by_family(
        lenet_grid_store: str, tmp_path: Path) -> None:
    """mlscale-mnist holds lenet5 (25 runs) and vgg_mini (2 runs): without --arch each is
    fitted on its own, never pooled into one law over both (27 points); vgg_mini's runs
    cannot carry a law and say why in a user's terms."""
    args = ["fit", "--experiment", "mlscale-mnist", "--law", "nd", "--tracking-uri",
            lenet_grid_store]
    result = CliRunner().invoke(cli, [*args, "--json", "--plot", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report["families"]) == {"lenet5", "vgg_mini"}
    lenet = report["families"]["lenet5"]
    assert lenet["nobs"] == 25 and lenet["E"]["value"] > 0
    alone = CliRunner().invoke(cli, [*args, "--arch", "lenet5", "--json"])
    assert json.loads(alone.output)["params"] == lenet["params"]  # the same fit as --arch
    assert report["families"]["vgg_mini"]["error"].startswith(
        "not fitted: all 2 selected runs have the same samples seen (600): a law in D needs "
        "runs on at least 2 amounts of data")
    assert (tmp_path / "lenet5" / "isoflops.png").is_file()
    run = MlflowClient(lenet_grid_store).get_run(lenet["mlflow_run_id"])
    assert run.data.params["arch"] == "lenet5"
    text = CliRunner().invoke(cli, args)
    assert text.exit_code == 0, text.output
    assert "hold 2 architectures (lenet5, vgg_mini): each is fitted on its own" in text.output
    assert "== lenet5 (25 runs) ==" in text.output and "== vgg_mini (2 runs) ==" in text.output
    assert "Points: 27" not in text.output and "Points: 25" in text.output


@pytest.mark.parametrize(("args", "message"), [
    (["--arch", "vgg_mini", "--law", "nd"],
     "all 2 selected runs have the same samples seen (600): a law in D needs runs on at "
     "least 2 amounts of data (--train-size or epochs); train more, or pass --arch / "
     "--experiment to select runs that have them"),
    (["--arch", "vgg_mini", "--law", "n"],
     "the n-law has 3 parameters and needs at least 5 runs; 2 selected: register more runs, "
     "or pass --arch / --experiment to select more"),
    (["--arch", "lenet5", "--law", "n", "--drop-top", "1"],
     "the n-law has 3 parameters and needs at least 5 runs; 4 selected (the n-law uses the "
     "runs at one data size, 4,800 samples; 25 in all) after --drop-top 1: register more "
     "runs, or pass --arch / --experiment to select more"),
])
def test_fit_errors_speak_of_runs_and_flags(lenet_grid_store: str, args: list[str],
                                            message: str) -> None:
    """Errors name what the user selected and typed (runs, sizes, --arch, --drop-top), not
    internal names such as "the runs' metric params" or "rows the n-law uses"."""
    result = CliRunner().invoke(cli, ["fit", "--experiment", "mlscale-mnist", *args,
                                      "--tracking-uri", lenet_grid_store])
    assert result.exit_code != 0
    assert str(result.exception) == message
    assert "metric params" not in message


def test_a_vanished_floor_and_a_failed_extrapolation_say_the_law_does_not_hold(
        tmp_path: Path) -> None:
    """The main job's five lenet5 runs (L_inf collapses to ~0), and runs that bend away
    from the law at the top of compute (held-out error far over 20%): each is a warning
    that the law does not hold, where a fit that holds (the first 5 points) has none."""
    csv = tmp_path / "runs.csv"
    csv.write_text("params,loss\n4358,0.2258\n7836,0.2164\n16860,0.1720\n33754,0.1286\n"
                   "61706,0.1147\n")
    report = fit_points(points_from_csv(csv, n_col="params"), "n")
    assert report.params["L_inf"].value < 1e-6
    assert any("collapsed to ~0" in w and "the law does not hold" in w
               for w in report.warnings), report.warnings
    sizes = np.logspace(5, 9, 10)
    loss = 1.0 + 30 * sizes**-0.3
    loss[-2:] = [3.0, 4.0]  # the largest runs diverged
    bent = fit_points(pd.DataFrame({"N": sizes, "loss": loss}), "n")
    ex = bent.extrapolation
    assert ex is not None and ex["mean_abs_pct_error"] > 20
    assert any(w.startswith("the law does not hold beyond the fitted compute")
               for w in bent.warnings), bent.warnings
    clean = fit_points(pd.DataFrame({"N": sizes[:8], "loss": 1.0 + 30 * sizes[:8]**-0.3}), "n")
    assert clean.warnings == []


@needs_chinchilla
def test_the_readme_states_the_command_that_reproduces_its_chinchilla_numbers() -> None:
    """The README's fit section gives a command and the numbers it prints; both hold."""
    import re
    import shlex

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Scaling fits: `mlscale fit`"):
                     readme.index("## Budget advice: `mlscale budget`")]
    command = re.search(r"`(mlscale fit --csv \.\./shared/data/chinchilla[^`]*)`", section)
    assert command is not None
    args = shlex.split(command.group(1))[1:]
    args[args.index("--csv") + 1] = str(CHINCHILLA)
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    stated: dict[str, str] = {}  # the first value the text after the command gives each
    for name, value in re.findall(r"(E|\u03b1|\u03b2|a) = (\d\.\d+)",
                                  section.split(command.group(0))[1]):
        stated.setdefault(name, value)
    got = {"E": report["E"]["value"], "\u03b1": report["alpha"]["value"],
           "\u03b2": report["beta"]["value"], "a": report["compute_optimal"]["a"]}
    for name, value in got.items():
        assert float(stated[name]) == pytest.approx(value, abs=6e-4), name
