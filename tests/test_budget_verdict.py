"""The budget verdict: families ranked for a budget, the winner's margin and confidence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlscale.budget import Advisor, Estimate, Option, Verdict, build_registry_model, rank_families
from mlscale.cli._budget import _print_advice


def _frame(handicap: float, noise: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """A models_frame of lenet5 and vgg_mini on the same law, vgg_mini's losses times
    ``handicap``, each run scattered by ``noise`` in log loss."""
    rng = np.random.default_rng(seed)
    rows = []
    for family, factor in (("lenet5", 1.0), ("vgg_mini", handicap)):
        for i, (params, size) in enumerate(
                (p, s) for p in np.geomspace(5e3, 1e6, 5) for s in (3000, 10000, 30000)):
            seen = 2 * size
            loss = (0.02 + 40 * params**-0.6 + 60 * seen**-0.55) * factor * float(
                np.exp(rng.normal(0, noise)))
            flops = params * 13.5
            rows.append({
                "name": f"mnist-{family}", "version": i + 1, "dataset": "mnist",
                "model_uri": f"models:/mnist-{family}/{i + 1}", "run_name": f"{family}-{i}",
                "arch": family, "width": 1.0, "depth": 1, "params": float(params),
                "flops_per_sample": flops, "train_flops": params * 36.7 * seen,
                "samples_seen": float(seen), "train_size": float(size), "test_loss": loss,
                "error_rate": loss / 3, "test_accuracy": 1 - loss / 3,
                "latency_p90_ms": 0.01 + 2e-8 * flops, "latency_threads": 2.0})
    return pd.DataFrame(rows)


def _verdict(handicap: float) -> Verdict:
    advisor = Advisor(build_registry_model(_frame(handicap), "mnist", "synthetic"))
    verdict = advisor.advise(1e12).verdict
    assert verdict is not None
    return verdict


def test_a_clearly_worse_family_loses_with_high_confidence() -> None:
    verdict = _verdict(1.5)
    assert [r.family for r in verdict.ranking] == ["lenet5", "vgg_mini"]
    assert verdict.winner == "lenet5" and verdict.runner_up == "vgg_mini"
    first, second = verdict.ranking
    assert verdict.loss_margin == pytest.approx(
        second.predicted_test_loss - first.predicted_test_loss)
    assert verdict.loss_margin > 0 and verdict.accuracy_margin > 0
    assert verdict.confidence > 0.95


def test_confidence_falls_as_the_families_draw_level() -> None:
    # vgg_mini's measured grid differs from lenet5's, so the tie lies near a 0.6 handicap.
    confidences = {h: _verdict(h) for h in (0.4, 0.55, 0.6, 0.7, 1.5)}
    assert confidences[0.4].winner == "vgg_mini" and confidences[1.5].winner == "lenet5"
    level = [confidences[h].confidence for h in (0.55, 0.6)]
    clear = [confidences[h].confidence for h in (0.4, 0.7, 1.5)]
    assert all(0.5 <= c < 0.8 for c in level)
    assert min(clear) > max(level) and min(clear) > 0.9


def test_the_cli_prints_the_ranking_and_the_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    advice = Advisor(build_registry_model(_frame(1.5), "mnist", "synthetic")).advise(1e13)
    _print_advice(advice)
    out = capsys.readouterr().out
    assert "Ranking (predicted test loss, accuracy): 1. lenet5 " in out and "2. vgg_mini " in out
    verdict = advice.verdict
    assert verdict is not None and verdict.loss_margin and verdict.accuracy_margin
    assert (f"Verdict: lenet5 wins by {verdict.loss_margin:.4f} nats of test loss "
            f"(+{100 * verdict.accuracy_margin:.2f} accuracy points) over vgg_mini; "
            f"confidence {verdict.confidence:.0%} that a run of lenet5 beats one of "
            "vgg_mini on test loss") in out


def _option(family: str, loss: float) -> Option:
    return Option(family, 1.0, 1, 1000, 10, 30, 1e9, 1000, 1.0, 1000.0,
                  Estimate(loss, loss / 2, loss * 2), Estimate(1 - loss, None, None), None, None)


def test_a_weak_fit_is_listed_after_the_ranked_families_however_low_its_loss() -> None:
    verdict = rank_families(_option("lenet5", 0.03), [_option("efficientnet_mini", 0.01),
                                                      _option("vgg_mini", 0.05)],
                            unranked={"efficientnet_mini"})
    assert [(r.family, r.ranked) for r in verdict.ranking] == [
        ("lenet5", True), ("vgg_mini", True), ("efficientnet_mini", False)]
    assert verdict.winner == "lenet5" and verdict.runner_up == "vgg_mini"
