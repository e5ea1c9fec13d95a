"""What to train for a FLOPs budget, what it will score and what it will cost to serve.

For every family fitted from the registry (``_model``: the fits, cached) and every point
of its measured dial grid, a budget C buys D = C / (training FLOPs per sample) samples;
the joint law predicts the test loss at (N, D'), where D' discounts repeated epochs of
the dataset's unique samples. The configuration with the lowest predicted loss wins;
its accuracy comes from the error-rate law, its latency from the family's latency model.
Intervals are 95% prediction intervals for one new run: the delta method on log loss
over the fit's parameter covariance plus its run-to-run scatter (Student's t). Every
family's best configuration is ranked, and the verdict (``_verdict``)
says by how much the winner wins and with what confidence.

Answers (``Advice``, ``Alternative``, ``Option``, ``Estimate``) live in ``_advice``;
callers import from here, never from the private modules.

>>> advisor = Advisor.from_registry(load_settings(), "mnist")  # doctest: +SKIP
>>> advice = advisor.advise(1e15)                               # doctest: +SKIP
>>> advice.recommendation.family, advice.recommendation.predicted_accuracy.value  # doctest: +SKIP
('lenet5', 0.9921)
"""

from __future__ import annotations

from mlscale.budget._advice import (
    Advice,
    Alternative,
    Estimate,
    Option,
    cheapest_of_best,
    check_positive,
    check_target,
    low_confidence_reasons,
)
from mlscale.budget._advisor import Advisor
from mlscale.budget._model import (
    FamilyModel,
    LatencyModel,
    RegistryModel,
    build_registry_model,
    load_registry_model,
)
from mlscale.budget._verdict import RankedFamily, Verdict, rank_families

__all__ = ["Advice", "Advisor", "Alternative", "Estimate", "FamilyModel", "LatencyModel",
           "Option", "RankedFamily", "RegistryModel", "Verdict", "build_registry_model",
           "cheapest_of_best", "check_positive", "check_target", "load_registry_model",
           "low_confidence_reasons", "rank_families"]
