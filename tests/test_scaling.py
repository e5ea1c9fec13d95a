"""Scaling-law fits against Epoch AI's Chinchilla replication and synthetic ground truth."""

from __future__ import annotations

import doctest
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mlscale.scaling._fit
from mlscale.errors import MlscaleError
from mlscale.scaling import (
    ScalingFit,
    compute_optimal,
    effective_data,
    efficiency_fronts,
    fit_law,
    pareto_front,
    saturation_point,
)

CHINCHILLA = Path(__file__).resolve().parents[2] / "shared" / "data" / \
    "chinchilla_hoffmann2022_fig4.csv"
TRUE_ND = {"E": 1.5, "A": 400.0, "B": 1500.0, "alpha": 0.35, "beta": 0.3}


def _nd_grid(side: int = 8) -> tuple[np.ndarray, np.ndarray]:
    n, d = np.meshgrid(np.logspace(6, 9, side), np.logspace(8, 11, side))
    return n.ravel(), d.ravel()


def _nd_data(seed: int, sigma: float = 0.02) -> dict[str, np.ndarray]:
    n, d = _nd_grid()
    mean = TRUE_ND["E"] + TRUE_ND["A"] / n ** TRUE_ND["alpha"] + TRUE_ND["B"] / d ** TRUE_ND["beta"]
    noise = np.exp(np.random.default_rng(seed).normal(0.0, sigma, n.size))
    return {"N": n, "D": d, "loss": mean * noise}


@pytest.fixture(scope="module")
def chinchilla() -> pd.DataFrame:
    if not CHINCHILLA.is_file():
        pytest.skip(f"Chinchilla reference data not found at {CHINCHILLA}")
    raw = pd.read_csv(CHINCHILLA)
    n = raw["Model Size"]
    return pd.DataFrame({"N": n, "D": raw["Training FLOP"] / (6 * n), "loss": raw["loss"]})


@pytest.fixture(scope="module")
def chinchilla_fit(chinchilla: pd.DataFrame) -> tuple[ScalingFit, float]:
    started = time.perf_counter()
    fit = fit_law(chinchilla, "nd", drop_top=5, bootstrap=100, seed=0)
    return fit, time.perf_counter() - started


def test_chinchilla_fit_reproduces_epoch_ai(chinchilla_fit: tuple[ScalingFit, float]) -> None:
    fit, seconds = chinchilla_fit
    # Besiroglu et al. 2024 (Epoch AI), Huber delta 1e-3, five highest-loss points left out.
    assert fit.nobs == 240
    assert fit.params["E"] == pytest.approx(1.817, rel=0.02)
    assert fit.params["alpha"] == pytest.approx(0.3478, rel=0.02)
    assert fit.params["beta"] == pytest.approx(0.3658, rel=0.02)
    # A and B are poorly identified (Epoch's bootstrap SEs: 125 and 1293), so loosely.
    assert fit.params["A"] == pytest.approx(482.01, rel=0.25)
    assert fit.params["B"] == pytest.approx(2085.43, rel=0.25)
    assert compute_optimal(fit, k=6).a == pytest.approx(0.513, abs=0.02)
    assert seconds < 10  # the acceptance bound (with 100 bootstrap refits on top)


def test_chinchilla_intervals_and_summary(chinchilla_fit: tuple[ScalingFit, float]) -> None:
    fit, _ = chinchilla_fit
    names = ["E", "A", "B", "alpha", "beta"]
    for method in ("wald", "bootstrap"):
        ci = fit.conf_int(0.05, method=method)
        assert list(ci.index) == names and list(ci.columns) == ["lower", "upper"]
        assert (ci["lower"] < fit.params).all() and (fit.params < ci["upper"]).all()
    assert fit.bootstrap_params is not None and fit.bootstrap_params.shape == (100, 5)
    assert list(fit.bse.index) == names and (fit.bse > 0).all()
    # Epoch's bootstrap SE for alpha is 0.02; the linearised one assumes iid residuals.
    assert 0.005 < fit.bse["alpha"] < 0.03
    text = fit.summary()
    assert "E + A * N^-alpha + B * D^-beta" in text and "Points: 240" in text
    assert "R^2" in text and "RMSE" in text and "Huber" in text
    assert fit.rsquared > 0.99 and fit.rmse < 0.01
    assert len(fit.resid) == 240 and fit.resid.index.is_unique
    ci_ab = compute_optimal(fit, k=6).conf_int()
    assert ci_ab.loc["a", "lower"] < 0.513 < ci_ab.loc["a", "upper"]
    assert ci_ab.loc["a", "lower"] + ci_ab.loc["b", "upper"] == pytest.approx(1)


def test_drop_top_leaves_out_the_highest_losses(chinchilla: pd.DataFrame) -> None:
    fit = fit_law(chinchilla.iloc[:40], "nd", drop_top=3)
    dropped = chinchilla.iloc[:40].index.difference(fit.resid.index)
    assert set(dropped) == set(chinchilla.iloc[:40]["loss"].nlargest(3).index)


def test_nd_intervals_cover_the_truth() -> None:
    # 40 seeded data sets of 64 points, 2% log-normal noise: the 95% Wald intervals
    # cover each true parameter in 39 of them (0.95-0.96 over 200 seeds; all five
    # at once 0.925 here, 0.88 over 200).
    hits = []
    for seed in range(40):
        ci = fit_law(_nd_data(seed), "nd").conf_int(0.05)
        hits.append([ci.loc[k, "lower"] <= v <= ci.loc[k, "upper"] for k, v in TRUE_ND.items()])
    coverage = np.mean(hits, axis=0)
    assert (coverage >= 0.9).all(), dict(zip(TRUE_ND, coverage, strict=True))


@pytest.mark.parametrize(("law", "var", "names", "truth"), [
    ("n", "N", ["L_inf", "A", "alpha"], [0.02, 40.0, 0.45]),
    ("d", "D", ["L_inf", "B", "beta"], [0.01, 300.0, 0.6]),
    ("c", "C", ["L_inf", "K", "gamma"], [1.7, 2000.0, 0.15]),
])
def test_one_variable_laws_recover_their_parameters(
        law: str, var: str, names: list[str], truth: list[float]) -> None:
    x = np.logspace(4, 9, 25) if var != "C" else np.logspace(15, 23, 25)
    l_inf, amp, exp = truth
    loss = (l_inf + amp * x**-exp) * np.exp(np.random.default_rng(1).normal(0, 0.005, x.size))
    fit = fit_law({var: x, "loss": loss}, law)
    assert list(fit.params.index) == names
    np.testing.assert_allclose(fit.params, truth, rtol=0.1)
    ci = fit.conf_int(0.01)
    assert list(ci.index) == names and list(ci.columns) == ["lower", "upper"]
    assert ((ci["lower"] <= truth) & (ci["upper"] >= truth)).all()
    p = fit.params
    np.testing.assert_allclose(fit.predict(**{var: [1e5, 1e20]}),
                               p.iloc[0] + p.iloc[1] * np.array([1e5, 1e20]) ** -p.iloc[2])
    assert fit.law.formula in fit.summary()


def test_columns_map_roles_to_names() -> None:
    data = _nd_data(0)
    renamed = {"params": data["N"], "tokens": data["D"], "test_loss": data["loss"]}
    fit = fit_law(renamed, "nd", columns={"N": "params", "D": "tokens", "loss": "test_loss"})
    pd.testing.assert_series_equal(fit.params, fit_law(data, "nd").params)


def test_compute_optimal_minimises_loss_at_fixed_compute() -> None:
    fit = fit_law(_nd_data(3), "nd")
    k = 3.7  # not 6: the family's measured FLOPs per parameter per sample
    opt = compute_optimal(fit, k)
    assert opt.a + opt.b == pytest.approx(1.0, abs=1e-12)
    p = fit.params
    assert opt.a == pytest.approx(p["beta"] / (p["alpha"] + p["beta"]))
    for budget in (1e15, 1e18, 1e21):
        n = np.logspace(0, np.log10(budget / k), 200_001)
        best = n[np.argmin(fit.predict(N=n, D=budget / (k * n)))]
        assert opt.N_opt(budget) == pytest.approx(best, rel=1e-3)
        assert opt.N_opt(budget) * opt.D_opt(budget) * k == pytest.approx(budget)
        assert opt.L_opt(budget) == pytest.approx(fit.predict(N=best, D=budget / (k * best)))


def test_compute_optimal_with_limited_data_uses_effective_data() -> None:
    fit = fit_law(_nd_data(3), "nd")
    k, unique = 6.0, 1e9
    free, capped = compute_optimal(fit, k), compute_optimal(fit, k, unique=unique)
    small, big = 1e15, 1e22  # D_opt well under, then far over, the unique data
    assert free.D_opt(small) < unique and capped.N_opt(small) == free.N_opt(small)
    assert free.D_opt(big) > unique
    n = np.logspace(0, np.log10(big / k), 200_001)
    loss = fit.predict(N=n, D=big / (k * n), unique=unique)
    assert capped.N_opt(big) == pytest.approx(n[np.argmin(loss)], rel=1e-3)
    assert capped.N_opt(big) > free.N_opt(big)  # repeated data: spend more on parameters
    assert capped.L_opt(big) > free.L_opt(big)  # and never promise the free law's loss
    np.testing.assert_array_equal(capped.N_opt([small, big]),
                                  [capped.N_opt(small), capped.N_opt(big)])


def test_effective_data() -> None:
    unique = 60_000
    samples = np.array([1e3, 3e4, 6e4])
    np.testing.assert_array_equal(effective_data(samples, unique), samples)  # R_D <= 0
    seen = np.logspace(3, 12, 200)
    d_eff = effective_data(seen, unique, r_star=15.4)
    assert (np.diff(d_eff) >= 0).all() and (np.diff(d_eff[seen < 1e7]) > 0).all()
    assert (d_eff <= seen).all()
    assert d_eff[-1] == pytest.approx(unique * (1 + 15.4), rel=1e-9)
    repeats = 600_000 / unique - 1
    expected = unique + unique * 15.4 * (1 - np.exp(-repeats / 15.4))
    assert effective_data(600_000, unique) == pytest.approx(expected)


def test_r_star_can_be_fitted() -> None:
    n, seen = (g.ravel() for g in np.meshgrid(np.logspace(4, 7, 7), np.logspace(4, 7.5, 10)))
    unique, r_star = 60_000.0, 8.0
    mean = 0.05 + 30 / n**0.4 + 200 / effective_data(seen, unique, r_star) ** 0.45
    loss = mean * np.exp(np.random.default_rng(0).normal(0, 0.01, n.size))
    fit = fit_law({"N": n, "D": seen, "loss": loss}, "nd", unique=unique, r_star="fit")
    assert fit.params["R_star"] == pytest.approx(r_star, rel=0.1)
    ci = fit.conf_int()
    assert ci.loc["R_star", "lower"] < r_star < ci.loc["R_star", "upper"]
    assert "R* = " in fit.summary()
    # Fitting D as if every sample were new misfits the repeated points.
    assert fit.rmse < fit_law({"N": n, "D": seen, "loss": loss}, "nd").rmse / 2
    # Repeats worth nothing (R* -> 0) is a bound of the search, not a crash.
    flat = 0.05 + 30 / n**0.4 + 200 / np.minimum(seen, unique) ** 0.45
    worthless = fit_law({"N": n, "D": seen, "loss": flat}, "nd", unique=unique, r_star="fit")
    assert 1e-3 <= worthless.params["R_star"] < 0.1


def test_saturation_point() -> None:
    x = np.logspace(3, 7, 30)
    # Gain per decade 0.2 ln(10) u e^-u (u = x / 1e4) falls below 1e-3 at x = 10^4.92.
    sat = saturation_point(x, 0.99 - 0.2 * np.exp(-x / 1e4))
    assert sat.x is not None and np.log10(sat.x) == pytest.approx(4.92, abs=0.02)
    assert list(sat.curve.columns) == ["x", "smoothed", "gain_per_decade"]
    assert saturation_point(x, 0.5 + 0.05 * np.log10(x)).x is None  # +5 points per 10x


def test_pareto_front() -> None:
    runs = pd.DataFrame({
        "family": ["a", "a", "a", "b", "b", "b"],
        "flops": [1.0, 2.0, 3.0, 1.0, 5.0, 5.0],
        "error": [0.30, 0.35, 0.20, 0.25, 0.10, 0.12],
    })
    assert pareto_front(runs, "flops", "error").index.tolist() == [3, 2, 4]
    assert pareto_front(runs, "flops", "error", minimize_value=False).index.tolist() == [0, 1]
    per_family = runs.groupby("family").apply(pareto_front, "flops", "error")
    assert per_family.index.get_level_values(1).tolist() == [0, 2, 3, 4]


def test_efficiency_fronts_per_family_and_cost() -> None:
    runs = pd.DataFrame({
        "arch": ["a", "a", "a", "b", "b"],
        "train_flops": [1e9, 2e9, 4e9, 1e9, 3e9],
        "params": [5e4, 1e4, 2e4, 3e4, 3e4],
        "latency_p90_ms": [0.1, 0.2, np.nan, 0.3, 0.2],
        "test_accuracy": [0.97, 0.98, 0.985, 0.96, 0.99],
    }, index=[10, 11, 12, 13, 14])
    fronts = efficiency_fronts(runs)
    rows = {(fam, cost): group["row"].tolist()
            for (fam, cost), group in fronts.groupby(["arch", "cost"], sort=False)}
    assert rows == {("a", "train_flops"): [10, 11, 12], ("a", "params"): [11, 12],
                    ("a", "latency_p90_ms"): [10, 11], ("b", "train_flops"): [13, 14],
                    ("b", "params"): [14], ("b", "latency_p90_ms"): [14]}
    # along each front, more cost buys strictly more accuracy
    for _, group in fronts.groupby(["arch", "cost"]):
        assert group["value"].is_monotonic_increasing and group["value"].is_unique
    error_fronts = efficiency_fronts(runs.assign(err=1 - runs["test_accuracy"]), value="err",
                                     higher_is_better=False)
    assert error_fronts["row"].tolist() == fronts["row"].tolist()
    with pytest.raises(MlscaleError, match="missing column"):
        efficiency_fronts(runs, by="family")


def test_a_fit_survives_json_and_its_prediction_interval_covers_new_runs() -> None:
    fit = fit_law(_nd_data(0), "nd")
    again = ScalingFit.from_dict(json.loads(json.dumps(fit.to_dict())))
    assert again.summary() == fit.summary()
    n, d = _nd_grid()
    np.testing.assert_allclose(again.predict(N=n, D=d), fit.predict(N=n, D=d))
    mean = TRUE_ND["E"] + TRUE_ND["A"] / n ** TRUE_ND["alpha"] + TRUE_ND["B"] / d ** TRUE_ND["beta"]
    new_runs = mean * np.exp(np.random.default_rng(99).normal(0.0, 0.02, (20, n.size)))
    value, lower, upper = fit.predict_interval(N=n, D=d)
    assert np.all(lower < value) and np.all(value < upper)
    coverage = np.mean((lower <= new_runs) & (new_runs <= upper))
    assert 0.9 <= coverage <= 0.99
    _, near_lo, near_hi = fit.predict_interval(N=1e9, D=1e11)
    _, far_lo, far_hi = fit.predict_interval(N=1e12, D=1e14)
    assert far_hi / far_lo > near_hi / near_lo  # extrapolation widens the interval
    _, mean_lo, mean_hi = fit.predict_interval(N=1e9, D=1e11, scatter=False)
    assert mean_hi / mean_lo < near_hi / near_lo


def test_docstring_examples_run() -> None:
    results = doctest.testmod(mlscale.scaling._fit)
    assert results.attempted > 0 and results.failed == 0


@pytest.mark.parametrize(("data", "law", "kwargs", "message"), [
    ({"N": [1e6, 1e7, 1e8, 1e9], "loss": [3, 2.5, 2.2, 2.1]}, "n", {}, "needs at least 5"),
    ({"N": [1e6, 1e7, np.nan, 1e9, 1e10], "loss": [3, 2.5, 2.2, 2.1, 2]}, "n", {},
     "'N' has 1 NaN, infinite or non-positive"),
    ({"N": [1e6, 1e7, 0, -1e9, 1e10], "loss": [3, 2.5, 2.2, 2.1, 2]}, "n", {},
     "'N' has 2 NaN, infinite or non-positive"),
    ({"N": [1e6, 1e7, 1e8, 1e9, 1e10], "loss": [3, 2.5, 0, 2.1, 2]}, "n", {},
     "'loss' has 1 NaN, infinite or non-positive"),
    ({"N": [1e6, 1e7, 1e8, 1e9, 1e10], "loss": [3, np.inf, 2.2, 2.1, 2]}, "n", {},
     r"'loss' has 1 NaN, infinite or non-positive value\(s\) \(at position\(s\) 1\)"),
    ({"N": [1e6] * 5, "loss": [3, 2.5, 2.2, 2.1, 2]}, "n", {}, "'N' holds one value"),
    ({"N": [1e6, 1e7, 1e8, 1e9, 1e10], "loss": [2.0] * 5}, "n", {}, "'loss' holds one value"),
    ({"C": [1e6, 1e7, 1e8, 1e9, 1e10], "loss": [3, 2.5, 2.2, 2.1, 2.5]}, "c", {},
     "needs at least 5 points; got 4"),  # the frontier leaves out the last, dominated row
    ({"N": [1e6, 1e7, 1e8, 1e9, 1e10], "loss": [3, 2.5, 2.2, 2.1, 2]}, "nd", {},
     r"missing column\(s\) \['D'\]"),
    ({"N": [1.0] * 6, "loss": [1.0] * 6}, "n", {"columns": {"loss": "error"}},
     r"missing column\(s\) \['error'\]"),
    ({"N": [1.0] * 6, "loss": [1.0] * 6}, "n", {"columns": {"n": "N"}}, "unknown key"),
    ({"N": [1.0] * 6, "loss": [1.0] * 6}, "kaplan", {}, "unknown law 'kaplan'"),
    ({"N": [1.0] * 6, "loss": [1.0] * 6}, "n", {"drop_top": 6}, "drop_top"),
    ({"N": [1.0] * 6, "loss": [1.0] * 6}, "n", {"unique": 10}, "unique= applies"),
    ({"N": [1.0] * 6, "loss": [1.0] * 6}, "n", {"r_star": 0}, "r_star must be"),
    ({"N": [1.0] * 6, "D": [1.0] * 6, "loss": [1.0] * 6}, "d", {"r_star": "fit"},
     "past one epoch"),
])
def test_bad_input_is_a_one_line_error(data: dict[str, list[float]], law: str,
                                       kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(MlscaleError, match=message) as info:
        fit_law(data, law, **kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_bad_input_elsewhere() -> None:
    x = np.logspace(4, 8, 9)
    fit = fit_law({"N": x, "loss": 2 + 50 * x**-0.3}, "n")
    with pytest.raises(MlscaleError, match="joint 'nd' fit"):
        compute_optimal(fit, k=6)
    with pytest.raises(MlscaleError, match="needs N="):
        fit.predict(D=[1e6])
    with pytest.raises(MlscaleError, match="N must be positive"):
        fit.predict(N=[1e6, 0])
    with pytest.raises(MlscaleError, match="no bootstrap draws"):
        fit.conf_int(method="bootstrap")
    with pytest.raises(MlscaleError, match=r"too few distinct x \(3 more than 5% apart"):
        saturation_point([1, 10, 100, 102], [0.5, 0.6, 0.7, 0.8])
    with pytest.raises(MlscaleError, match=r"accuracies in \[0, 1\]"):
        saturation_point([1, 10, 100, 1000], [0.5, 0.6, np.nan, 0.8])
    with pytest.raises(MlscaleError, match=r"missing column\(s\) \['cost'\]"):
        pareto_front(pd.DataFrame({"error": [0.1]}), "cost", "error")
    with pytest.raises(MlscaleError, match="positive"):
        effective_data([-1.0], 10)


@pytest.mark.parametrize(("n", "accuracy"), [
    # Two close parameter counts with different accuracies made LOWESS's local lines swing
    # to 118% accuracy between widths (the main job's alexnet_mini) ...
    ([25794, 95194, 100730, 398058], [0.9383, 0.9404, 0.9597, 0.9467]),
    # ... and, at LOWESS's default window, from -670% to 1515% on 7 LeNet-5 sizes.
    ([4157, 15738, 61706, 75545, 115249, 115268, 244362],
     [0.352, 0.765, 0.913, 0.882, 0.958, 0.95, 0.938])])
def test_the_saturation_curve_stays_within_what_was_measured(n: list[float],
                                                            accuracy: list[float]) -> None:
    curve = saturation_point(n, accuracy).curve["smoothed"].to_numpy()
    assert min(accuracy) <= curve.min() and curve.max() <= max(accuracy)
    assert np.all(np.diff(curve) >= 0)


def test_a_five_point_law_has_intervals_and_a_vanished_floor_is_pinned() -> None:
    """On 5 points LAD's kernel covariance is undefined: least squares' covariance stands
    in. A floor fitted to ~0 moves nothing: it has no interval, the other parameters do,
    and the prediction band is finite."""
    n = np.array([4358.0, 7836.0, 16860.0, 33754.0, 61706.0])
    loss = np.array([0.2258, 0.2164, 0.1720, 0.1286, 0.1147])  # the main job's lenet5
    fit = fit_law({"N": n, "loss": loss}, "n")
    assert fit.params["L_inf"] < 1e-6
    intervals = fit.conf_int()
    assert intervals.loc["L_inf"].isna().all()
    assert np.isfinite(intervals.loc[["A", "alpha"]].to_numpy()).all()
    low, high = intervals.loc["alpha"]
    assert low < fit.params["alpha"] < high
    _, lower, upper = fit.predict_interval(N=[1e4, 1e5])
    assert np.isfinite(lower).all() and np.isfinite(upper).all() and (lower < upper).all()
    wobble = np.array([1.02, 0.98, 1.01, 0.99, 1.0])
    floored = fit_law({"N": n, "loss": (0.05 + 30 * n**-0.5) * wobble}, "n")
    assert floored.params["L_inf"] > 0.01
    assert np.isfinite(floored.conf_int().to_numpy()).all()


def test_a_fit_that_ran_off_along_a_flat_direction_still_predicts_finite_losses() -> None:
    """A held-out fit on few points ran its amplitude past 1e308 with a large exponent
    (the main job's efficientnet_mini): A * N**-alpha was inf * 0, the check read nan%."""
    from dataclasses import replace

    n = np.array([1e4, 2e4, 4e4, 8e4, 1.6e5])
    fit = fit_law({"N": n, "loss": 0.05 + 30 * n**-0.5}, "n")
    runaway = replace(fit, theta=np.array([np.log(0.05), 750.0, 60.0]))
    predicted = runaway.predict(N=[1e6])
    assert np.isfinite(predicted).all()
    assert predicted[0] == pytest.approx(0.05 + np.exp(750.0 - 60.0 * np.log(1e6)))
