"""`mlscale budget` on a real registry: a LeNet-5 grid trained on MNIST and two VGG runs."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from _cli import run_main
from click.testing import CliRunner
from mlflow import MlflowClient

from mlscale.budget import Advisor, build_registry_model
from mlscale.budget._model import FamilyModel
from mlscale.cli import cli
from mlscale.errors import MlscaleError
from mlscale.registry import load_settings


@pytest.fixture(scope="module")
def advisor(lenet_grid_store: str) -> Advisor:
    return Advisor.from_registry(load_settings(lenet_grid_store), "mnist", refresh=True)


def test_the_advisor_fits_the_families_that_have_enough_runs(advisor: Advisor) -> None:
    assert set(advisor.model.families) == {"lenet5"}
    assert "2 usable runs" in advisor.model.skipped["vgg_mini"]
    lenet = advisor.model.families["lenet5"]
    assert lenet.loss_fit.nobs == 25 and lenet.error_fit.nobs == 25
    assert lenet.loss_fit.params["alpha"] > 0 and lenet.loss_fit.params["beta"] > 0
    assert lenet.latency is not None and lenet.latency.params[1] > 0  # more FLOPs, slower
    assert lenet.train_time is not None and lenet.train_time.nobs == 25
    assert lenet.train_time.params[1] > 0  # more FLOPs per sample, more seconds per sample
    assert advisor.model.unique == 55_000


def test_training_time_is_predicted_from_the_runs_recorded_times(
        advisor: Advisor, lenet_grid_store: str) -> None:
    """The 95% interval per sample holds most registered runs' measured times, and an
    option's time is that rate times the samples it sees."""
    lenet = advisor.model.families["lenet5"]
    assert lenet.train_time is not None
    runs = lenet.runs
    measured = (runs["train_time_s"] / runs["samples_seen"]).to_numpy()
    _, lower, upper = lenet.train_time.predict(runs["train_flops_per_sample"])
    assert ((lower <= measured) & (measured <= upper)).mean() >= 0.8
    option = advisor.advise(1e13).recommendation
    time = option.predicted_train_seconds
    assert time is not None and time.lower is not None and time.upper is not None
    rate, low, high = lenet.train_time.predict([option.train_flops_per_sample])
    assert time.value == pytest.approx(rate[0] * option.samples_seen)
    assert (time.lower, time.upper) == pytest.approx((low[0] * option.samples_seen,
                                                      high[0] * option.samples_seen))
    assert option.train_threads == lenet.train_time.threads >= 1
    text = CliRunner().invoke(cli, ["budget", "--flops", "1e13", "--tracking-uri",
                                    lenet_grid_store]).output
    predicted = text.splitlines()[2]
    assert "   training " in predicted and f" ({lenet.train_time.threads} thread" in predicted


def test_training_time_never_extrapolates_the_flop_rate(advisor: Advisor) -> None:
    """Past the largest timed run the rate is held (a log-log line would promise bigger
    models ever more FLOPs per second), and the advice says so."""
    timed = advisor.model.families["lenet5"].train_time
    assert timed is not None
    at_high, _, _ = timed.predict([timed.high])
    beyond, low, high = timed.predict([100 * timed.high])
    assert beyond[0] == pytest.approx(100 * at_high[0])
    assert low[0] < beyond[0] < high[0]
    small = timed.high / 1000  # below the timed sizes the line goes on
    intercept, slope = timed.params
    assert timed.predict([small])[0][0] == pytest.approx(np.exp(intercept) * small**slope)
    cached = FamilyModel.from_dict(json.loads(json.dumps(
        advisor.model.families["lenet5"].to_dict())))
    assert cached.train_time == timed
    big = advisor.advise(1e16).recommendation
    assert big.train_flops_per_sample > 10 * timed.high
    assert any(w.startswith("training time assumes the FLOP rate of the largest timed lenet5")
               for w in advisor.advise(1e16).warnings)


def test_more_budget_never_predicts_a_worse_loss(advisor: Advisor) -> None:
    budgets = np.geomspace(3e9, 1e16, 12)
    answers = [advisor.advise(float(c)) for c in budgets]
    losses = [a.recommendation.predicted_test_loss.value for a in answers]
    assert all(later <= earlier + 1e-12 for earlier, later in itertools.pairwise(losses))
    assert losses[-1] < losses[0]
    max_epochs = advisor.model.families["lenet5"].max_epochs(advisor.model.unique)
    for budget, answer in zip(budgets, answers, strict=True):
        option = answer.recommendation
        assert option.train_flops <= budget
        # the budget is spent to within a sample, unless the epochs the fits measured run out
        assert (budget - option.train_flops < option.train_flops_per_sample
                or option.samples_seen == int(advisor.model.unique * max_epochs))
        loss = option.predicted_test_loss
        assert loss.lower is not None and loss.upper is not None
        assert loss.lower < loss.value < loss.upper


def test_the_latency_limit_is_respected(advisor: Advisor) -> None:
    free = advisor.advise(1e14)
    p90 = free.recommendation.predicted_latency_p90_ms
    assert p90 is not None
    limit = p90.value / 2
    limited = advisor.advise(1e14, max_latency_ms=limit)
    limited_p90 = limited.recommendation.predicted_latency_p90_ms
    assert limited_p90 is not None and limited_p90.value <= limit
    kinds = {alt.kind: alt.option for alt in limited.alternatives}
    assert kinds["best_without_latency_limit"].params == free.recommendation.params
    assert (limited.recommendation.predicted_test_loss.value
            >= free.recommendation.predicted_test_loss.value)
    with pytest.raises(MlscaleError, match="raise --max-latency-ms"):
        advisor.advise(1e14, max_latency_ms=1e-9)


def test_the_inverse_agrees_with_the_forward_mode(advisor: Advisor) -> None:
    forward = advisor.advise(3e12)
    target = forward.recommendation.predicted_accuracy.value
    inverse = advisor.least_flops(target)
    assert inverse.target_accuracy == target
    assert inverse.budget_flops <= 3e12 * 1.001
    assert inverse.recommendation.predicted_accuracy.value >= target
    assert advisor.advise(inverse.budget_flops * 0.99).recommendation.predicted_accuracy.value \
        < target
    with pytest.raises(MlscaleError, match=r"no configuration is predicted to reach 99\.99"):
        advisor.least_flops(0.9999)


def test_alternatives_and_warnings(advisor: Advisor) -> None:
    big = advisor.advise(1e15)
    kinds = [alt.kind for alt in big.alternatives]
    assert "cheapest_within_0.1_points" in kinds
    cheapest = big.alternatives[kinds.index("cheapest_within_0.1_points")].option
    assert cheapest.train_flops < 1e15
    assert (cheapest.predicted_accuracy.value
            >= big.recommendation.predicted_accuracy.value - 1e-3 - 1e-9)
    text = " | ".join(big.warnings)
    largest = advisor.model.families["lenet5"].largest_run_flops
    spent = big.recommendation.train_flops
    assert f"{spent:.3g} training FLOPs are {spent / largest:.3g}x the largest lenet5" in text
    option = big.recommendation
    assert option.epochs <= advisor.model.families["lenet5"].max_epochs(55_000) == 1.0
    assert "epochs capped: the fitted lenet5 runs typically made 1 pass over" in text
    assert f"leaves {1e15 - option.train_flops:.3g} FLOPs unspent" in text
    assert big.nearest_registered_model["model_uri"].startswith("models:/mnist-lenet5/")
    small = advisor.advise(largest)
    assert not any("extrapolation" in w for w in small.warnings)


def test_budget_json_from_the_cli(lenet_grid_store: str) -> None:
    result = CliRunner().invoke(cli, ["budget", "--flops", "1e13", "--tracking-uri",
                                      lenet_grid_store, "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    for key in ("family", "dials", "params", "samples_seen", "epochs", "predicted_test_loss",
                "predicted_accuracy", "predicted_latency_p90_ms", "nearest_registered_model",
                "alternatives", "warnings", "train_command"):
        assert key in answer, key
    for key in ("predicted_test_loss", "predicted_accuracy", "predicted_latency_p90_ms",
                "predicted_train_seconds"):
        assert set(answer[key]) == {"value", "lower", "upper"}
    assert answer["family"] == "lenet5" and set(answer["dials"]) == {"width", "depth"}
    assert answer["registry"]["from_cache"] is True  # the module's advisor cached the fits
    text = CliRunner().invoke(cli, ["budget", "--target-accuracy", "0.93", "--tracking-uri",
                                    lenet_grid_store]).output
    assert "the least budget predicted to reach 93.00%" in text and "Recommended: lenet5" in text


def test_fits_are_refreshed_when_the_registry_changes(lenet_grid_store: str) -> None:
    settings = load_settings(lenet_grid_store)
    assert Advisor.from_registry(settings, "mnist").from_cache
    client = MlflowClient(lenet_grid_store)
    version = client.search_model_versions("name = 'mnist-vgg_mini'")[0]
    client.create_model_version(version.name, version.source, version.run_id, tags=version.tags)
    rebuilt = Advisor.from_registry(settings, "mnist")
    assert not rebuilt.from_cache
    assert "3 usable runs" in rebuilt.model.skipped["vgg_mini"]
    assert Advisor.from_registry(settings, "mnist").from_cache


@pytest.mark.parametrize(("args", "message"), [
    *[(["--flops", value], f"Invalid value for '--flops': '{value}' is not a positive finite "
       "number") for value in ("0", "-1", "abc", "nan", "1e400")],
    (["--flops", "1"], "too small"),
    (["--flops", "1e12", "--families", "transformer"], "unknown architecture 'transformer'"),
    (["--flops", "1e12", "--arch", "vgg_mini"], "no scaling fit for vgg_mini"),
    (["--flops", "1e12", "--max-latency-ms", "-2"],
     "Invalid value for '--max-latency-ms': '-2' is not a positive finite number"),
    (["--target-accuracy", "1.5"], "--target-accuracy must be in (0, 1)"),
    (["--flops", "1e12", "--target-accuracy", "0.9"], "exactly one of"),
    ([], "exactly one of"),
])
def test_bad_input_is_one_line_and_a_nonzero_exit(
        capsys: pytest.CaptureFixture[str], lenet_grid_store: str, args: list[str],
        message: str) -> None:
    code, out, err = run_main(capsys, "budget", *args, "--tracking-uri", lenet_grid_store)
    assert code != 0 and out == ""
    assert message in err and err.count("\n") == 1, err


def test_an_empty_registry_is_a_one_line_error(capsys: pytest.CaptureFixture[str],
                                                fresh_store: str) -> None:
    MlflowClient(fresh_store, fresh_store).search_experiments()  # a store, with no models
    capsys.readouterr()  # MLflow's note that it made the tables
    code, _, err = run_main(capsys, "budget", "--flops", "1e15")
    assert code == 1
    assert "the registry has no models for dataset 'mnist'" in err and err.count("\n") == 1


def test_a_dataset_without_models_names_the_datasets_the_registry_holds(
        capsys: pytest.CaptureFixture[str], lenet_grid_store: str) -> None:
    versions = len(MlflowClient(lenet_grid_store, lenet_grid_store).search_model_versions())
    code, _, err = run_main(capsys, "budget", "--flops", "1e15", "--dataset", "fashion-mnist",
                            "--tracking-uri", lenet_grid_store)
    assert code == 1
    assert err == ("Error: the registry has no models for dataset 'fashion-mnist'; it holds "
                   f"models of mnist ({versions} versions): pass --dataset (a user dataset by "
                   "its source, e.g. npz:PATH)\n")


def _synthetic_frame(seed: int = 0) -> pd.DataFrame:
    """A models_frame of two families: lenet5 with 30 runs on a clean law, vgg_mini with 7
    runs so noisy that its fit is weak."""
    rng = np.random.default_rng(seed)
    rows = []
    for family, runs, noise in (("lenet5", 30, 0.02), ("vgg_mini", 7, 0.6)):
        for i in range(runs):
            params = float(rng.choice(np.geomspace(5e3, 1e6, 6)))
            size = float(rng.choice([3000, 10000, 30000, 55000]))
            seen = size * float(rng.choice([1, 2, 4]))
            scale = float(np.exp(rng.normal(0, noise)))
            loss = (0.02 + 40 * params**-0.6 + 60 * seen**-0.55) * scale
            flops = params * 13.5
            rows.append({
                "name": f"mnist-{family}", "version": i + 1, "dataset": "mnist",
                "model_uri": f"models:/mnist-{family}/{i + 1}", "run_name": f"{family}-{i}",
                "arch": family, "width": 1.0, "depth": 1, "params": params,
                "flops_per_sample": flops, "train_flops": params * 36.7 * seen,
                "samples_seen": seen, "train_size": size, "test_loss": loss,
                "error_rate": loss / 3, "test_accuracy": 1 - loss / 3,
                "latency_p90_ms": 0.01 + 2e-8 * flops, "latency_threads": 2.0})
    return pd.DataFrame(rows)


def test_a_weak_fit_is_shown_but_not_ranked() -> None:
    advisor = Advisor(build_registry_model(_synthetic_frame(), "mnist", "synthetic"))
    lenet, vgg = advisor.model.families["lenet5"], advisor.model.families["vgg_mini"]
    spans = advisor.interval_spans([lenet, vgg], 1e13, None)
    assert spans["lenet5"] * 10 < spans["vgg_mini"]
    answer = advisor.advise(1e13)
    assert answer.recommendation.family == "lenet5"
    assert any(w.startswith("vgg_mini is not ranked: its fit is too weak here")
               for w in answer.warnings)
    kinds = {alt.kind: alt for alt in answer.alternatives}
    assert "weak fit: not ranked" in kinds["best_vgg_mini"].why
    assert answer.recommendation.latency_threads == 2
    assert answer.recommendation.predicted_train_seconds is None  # no run recorded its time
    only_vgg = advisor.advise(1e13, families=["vgg_mini"])  # asked for, it is answered
    assert only_vgg.recommendation.family == "vgg_mini"
    with pytest.raises(MlscaleError, match="too small"):
        advisor.advise(1e3)


def _registry_frame(store: str, min_width: float = 1.0) -> pd.DataFrame:
    """The real grid's lenet5 runs of at least ``min_width``, as the registry lists them."""
    from mlscale.registry import models_frame

    frame = models_frame(load_settings(store), dataset="mnist")
    return frame[(frame["arch"] == "lenet5") & (frame["width"] >= min_width)].copy()


def test_a_tie_goes_to_the_cheapest_configuration(lenet_grid_store: str) -> None:
    """The real grid's widest runs, their losses averaged over width at each data size (a
    family saturated in width): the fit's N term vanishes, every configuration the epoch
    cap holds to 55,000 samples predicts the same loss to ~1e-7, and the recommendation is
    the cheapest of them, not the dearest (width 8, depth 3: 100x the FLOPs for nothing)."""
    from mlscale.budget import cheapest_of_best
    from mlscale.budget._advice import SAME_LOSS

    frame = _registry_frame(lenet_grid_store)
    for column in ("test_loss", "error_rate"):
        frame[column] = frame.groupby("train_size")[column].transform("mean")
    frame["test_accuracy"] = 1 - frame["error_rate"]
    advisor = Advisor(build_registry_model(frame, "mnist", "flat-in-width"))
    lenet = advisor.model.families["lenet5"]
    for budget in (1e12, 1e13, 1e15):
        option = advisor.advise(budget).recommendation
        loss, samples = advisor._losses(lenet, np.array([budget]), None)
        cost = samples[0] * lenet.candidates["train_flops_per_sample"].to_numpy(dtype=float)
        tied = loss[0] <= np.nanmin(loss[0]) * (1 + SAME_LOSS)
        assert tied.sum() > 5  # many widths and depths tie
        assert option.train_flops == pytest.approx(cost[tied].min())
        assert option.train_flops < cost[tied].max() / 50
        row = cheapest_of_best(loss[0], cost)
        assert row is not None and option.params == lenet.candidates["params"].iloc[row]
        for alt in advisor.advise(budget).alternatives:  # nothing as good is cheaper
            if alt.option.predicted_test_loss.value <= loss[0][tied].min() * (1 + SAME_LOSS):
                assert alt.option.train_flops >= option.train_flops


def test_a_tie_is_a_relative_difference_under_same_loss() -> None:
    """Losses within 1e-5 (relative) of the lowest tie, and the cheapest of them wins;
    infinite (not allowed) and NaN losses never do."""
    from mlscale.budget import cheapest_of_best

    loss = np.array([0.2, 0.1 * (1 + 1e-9), 0.1, np.inf, np.nan])
    assert cheapest_of_best(loss, np.array([1.0, 5.0, 7.0, 0.5, 0.1])) == 1
    assert cheapest_of_best(loss, np.array([1.0, 8.0, 7.0, 0.5, 0.1])) == 2
    assert cheapest_of_best(np.array([np.inf, np.nan]), np.array([1.0, 2.0])) is None
    # a real difference (0.1%) is not a tie: the lower loss wins however dear
    assert cheapest_of_best(np.array([0.1, 0.1 * (1 + 1e-3)]), np.array([9.0, 1.0])) == 0


def test_a_weak_fit_marks_the_headline_low_confidence(
        lenet_grid_store: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The real grid's 15 runs of width 1 to 3: at 1e12 FLOPs the 95% interval on test
    loss spans over 10x (the weak-fit warning); the headline itself says LOW CONFIDENCE,
    in text and in JSON. The full grid at 1e13 is not marked."""
    from mlscale.cli._budget import _print_advice

    advisor = Advisor(build_registry_model(_registry_frame(lenet_grid_store), "mnist", "w>=1"))
    advice = advisor.advise(1e12)
    loss = advice.recommendation.predicted_test_loss
    assert loss.lower is not None and loss.upper is not None
    assert loss.upper / loss.lower > 10
    assert any(w.startswith("weak fit:") for w in advice.warnings)
    assert advice.low_confidence
    headline = advice.headline()
    assert headline.startswith("Recommended (LOW CONFIDENCE: weak fit, the 95% interval on "
                               f"test loss spans {loss.upper / loss.lower:.3g}x, accuracy "
                               "anywhere in [")
    assert headline.endswith(f"): {advice.recommendation.describe()}")
    payload = advice.to_dict()
    assert payload["low_confidence"] is True and payload["headline"] == headline
    assert payload["low_confidence_reasons"] == advice.low_confidence
    _print_advice(advice)
    assert headline in capsys.readouterr().out.splitlines()
    result = CliRunner().invoke(cli, ["budget", "--flops", "1e13", "--tracking-uri",
                                      lenet_grid_store, "--json"])
    strong = json.loads(result.output)
    assert strong["low_confidence"] is False and strong["low_confidence_reasons"] == []
    assert strong["headline"].startswith("Recommended: lenet5 width ")
