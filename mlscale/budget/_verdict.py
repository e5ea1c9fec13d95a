"""Which family wins a budget, by how much, and with what confidence.

Each family's best configuration for the budget is ranked by predicted test loss. The
margin is the runner-up's predicted loss less the winner's (and the accuracy points
between them); the confidence is the probability that a new run of the winner scores a
lower test loss than a new run of the runner-up, with each prediction's log loss taken
as normal with the spread its 95% prediction interval implies (the intervals are formed
on log loss, see ``mlscale.budget``), the two runs independent.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlscale.budget._advice import Estimate, Option

__all__ = ["RankedFamily", "Verdict", "rank_families"]

_Z95 = NormalDist().inv_cdf(0.975)


@dataclass(frozen=True)
class RankedFamily:
    """One family's best configuration for the budget, as the ranking lists it."""

    family: str
    width: float
    depth: int
    params: int
    predicted_test_loss: float
    predicted_accuracy: float
    ranked: bool  # False: its fit is too weak to rank; listed after the ranked families


@dataclass(frozen=True)
class Verdict:
    """Families ranked for one budget, and how clearly the first beats the second."""

    ranking: list[RankedFamily]  # the ranked families best first, then the weak fits
    winner: str
    runner_up: str | None
    loss_margin: float | None  # nats: the runner-up's predicted test loss less the winner's
    accuracy_margin: float | None  # the winner's predicted accuracy less the runner-up's
    confidence: float | None  # P(a run of the winner has the lower test loss)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"sentence": self.sentence()}

    def sentence(self) -> str:
        """One line: who wins, by how much, with what confidence."""
        if self.runner_up is None or self.loss_margin is None:
            return f"{self.winner} is the only family fitted"
        assert self.accuracy_margin is not None
        confidence = ("no interval to judge it by" if self.confidence is None else
                      f"confidence {self.confidence:.0%} that a run of {self.winner} beats "
                      f"one of {self.runner_up} on test loss")
        return (f"{self.winner} wins by {self.loss_margin:.4f} nats of test loss "
                f"({100 * self.accuracy_margin:+.2f} accuracy points) over {self.runner_up}; "
                f"{confidence}")


def _log_sd(estimate: Estimate) -> float | None:
    """The standard deviation of log loss that a 95% interval implies."""
    if estimate.lower is None or estimate.upper is None or estimate.lower <= 0:
        return None
    return (math.log(estimate.upper) - math.log(estimate.lower)) / (2 * _Z95)


def rank_families(best: Option, others: list[Option], unranked: set[str]) -> Verdict:
    """Rank ``best`` (the recommendation) and each other family's best option.

    ``unranked`` names families whose fits are too weak to be ranked: they are listed
    (marked) but never the runner-up.
    """
    options = sorted([best, *others],
                     key=lambda o: (o.family in unranked, o.predicted_test_loss.value))
    ranking = [RankedFamily(o.family, o.width, o.depth, o.params, o.predicted_test_loss.value,
                            o.predicted_accuracy.value, o.family not in unranked)
               for o in options]
    rivals = [o for o in options if o.family != best.family and o.family not in unranked]
    if not rivals:
        return Verdict(ranking, best.family, None, None, None, None)
    second = rivals[0]
    sds = (_log_sd(best.predicted_test_loss), _log_sd(second.predicted_test_loss))
    gap = math.log(second.predicted_test_loss.value) - math.log(best.predicted_test_loss.value)
    spread = None if sds[0] is None or sds[1] is None else math.hypot(sds[0], sds[1])
    confidence = NormalDist().cdf(gap / spread) if spread else None
    return Verdict(
        ranking, best.family, second.family,
        second.predicted_test_loss.value - best.predicted_test_loss.value,
        best.predicted_accuracy.value - second.predicted_accuracy.value, confidence)
