"""The advisor: the best configuration of every family for a budget, ranked."""


from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from mlscale.budget._advice import (
    GRID_PER_DECADE,
    MIN_SAMPLES,
    SAME_ACCURACY,
    WEAK_FIT_SPAN,
    Advice,
    Alternative,
    Estimate,
    Option,
    advice_warnings,
    cheapest_of_best,
    check_positive,
    check_target,
    estimate,
    fit_summary,
    low_confidence_reasons,
    nearest_run,
)
from mlscale.budget._model import FamilyModel, RegistryModel, load_registry_model
from mlscale.budget._verdict import rank_families
from mlscale.errors import MlscaleError
from mlscale.scaling import effective_data

if TYPE_CHECKING:
    from mlscale.registry import MlflowSettings

__all__ = ["Advisor"]


class Advisor:
    """Answers budget questions from a ``RegistryModel``."""

    def __init__(self, model: RegistryModel, *, from_cache: bool = False) -> None:
        self.model = model
        self.from_cache = from_cache

    @classmethod
    def from_registry(cls, settings: MlflowSettings, dataset: str = "mnist", *,
                      refresh: bool = False, on_status: Callable[[str], None] = lambda _: None
                      ) -> Advisor:
        """Fit (or load the cached fits of) the registry's models of ``dataset``."""
        model, cached = load_registry_model(settings, dataset, refresh=refresh,
                                            on_status=on_status)
        return cls(model, from_cache=cached)

    # -- choosing ----------------------------------------------------------------------

    def _families(self, families: Sequence[str] | None) -> list[FamilyModel]:
        if not families:
            return list(self.model.families.values())
        chosen = []
        for name in families:
            if name not in self.model.zoo and name not in self.model.skipped and ":" not in name:
                raise MlscaleError(f"unknown architecture {name!r}; choose one of: "
                                   f"{', '.join(self.model.zoo)}")
            if name not in self.model.families:
                why = self.model.skipped.get(name, "no registered models")
                raise MlscaleError(f"no scaling fit for {name} on {self.model.dataset}: {why}")
            chosen.append(self.model.families[name])
        return chosen

    def interval_spans(self, chosen: list[FamilyModel], budget: float,
                       max_latency_ms: float | None) -> dict[str, float]:
        """Per family, how many times its lower bound the 95% interval on test loss spans
        for the family's best configuration at ``budget`` (inf: no interval)."""
        spans = {}
        for fm in chosen:
            found = self._best([fm], np.array([budget]), max_latency_ms)[0]
            if found is None:
                continue
            loss = self._option(fm, found[1], budget).predicted_test_loss
            spans[fm.family] = (math.inf if loss.lower is None or loss.upper is None
                                else loss.upper / loss.lower)
        return spans

    def _ranked(self, chosen: list[FamilyModel], budget: float, max_latency_ms: float | None
                ) -> tuple[list[FamilyModel], dict[str, float]]:
        """The families whose predictions at ``budget`` are within 10x as uncertain as the
        best-determined family's, and every family's interval span. A fit far weaker than
        another's would win on noise: it is shown as an alternative, not ranked."""
        spans = self.interval_spans(chosen, budget, max_latency_ms)
        if not spans:
            return chosen, spans
        tightest = min(spans.values())
        ranked = [fm for fm in chosen if spans.get(fm.family, math.inf) <= tightest * WEAK_FIT_SPAN]
        return ranked or chosen, spans

    def _losses(self, fm: FamilyModel, budgets: NDArray[np.float64],
                max_latency_ms: float | None) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Predicted loss of every grid configuration at every budget (inf: not allowed),
        and the samples each would see; shapes (budgets, configurations)."""
        grid = fm.candidates
        samples = np.minimum(
            np.floor(budgets[:, None] / grid["train_flops_per_sample"].to_numpy()[None]),
            self._sample_cap(fm))
        allowed = samples >= MIN_SAMPLES
        if max_latency_ms is not None:
            if fm.latency is None:
                allowed &= False
            else:
                p90, _, _ = fm.latency.predict(grid["flops_per_sample"].to_numpy())
                allowed &= (p90 <= max_latency_ms)[None]
        params = np.broadcast_to(grid["params"].to_numpy(dtype=float)[None], samples.shape)
        loss = fm.loss_fit.predict(N=params, D=np.maximum(samples, 1.0),
                                   unique=self.model.unique)
        return np.where(allowed, loss, np.inf), samples

    def _best(self, families: list[FamilyModel], budgets: NDArray[np.float64],
              max_latency_ms: float | None) -> list[tuple[FamilyModel, int] | None]:
        """Per budget, the (family, grid row) to recommend: of the configurations whose
        predicted loss equals the lowest within ``SAME_LOSS`` (relative), the one that
        spends the fewest training FLOPs.

        Ties are common, not rare: under the epoch cap every configuration that can afford
        it sees the same samples, and a fit whose N term vanished (an amplitude left at
        its start, an exponent run off) then predicts the same loss, to numerical noise,
        for every width; the lowest loss alone would go to the dearest of them.
        """
        if not families:
            return [None] * len(budgets)
        losses, costs = [], []
        owners: list[tuple[FamilyModel, int]] = []
        for fm in families:
            loss, samples = self._losses(fm, budgets, max_latency_ms)
            losses.append(loss)
            costs.append(samples * fm.candidates["train_flops_per_sample"].to_numpy(
                dtype=float)[None])
            owners.extend((fm, row) for row in range(loss.shape[1]))
        loss, cost = np.concatenate(losses, axis=1), np.concatenate(costs, axis=1)
        picks = [cheapest_of_best(loss[i], cost[i]) for i in range(len(budgets))]
        return [None if pick is None else owners[pick] for pick in picks]

    def _sample_cap(self, fm: FamilyModel) -> int:
        """Samples worth training on: the dataset's unique samples times the most epochs
        the family's fitted runs made on comparable data (past that the law is unmeasured,
        and on a small dataset more passes tend to raise the test loss, not lower it)."""
        return max(MIN_SAMPLES, math.floor(self.model.unique * fm.max_epochs(self.model.unique)))

    def _samples(self, fm: FamilyModel, row: int, budget: float) -> int:
        """Samples grid row ``row`` sees on ``budget``, within the epoch cap."""
        per_sample = fm.candidates["train_flops_per_sample"].iloc[row]
        return min(math.floor(budget / per_sample), self._sample_cap(fm))

    def _accuracy(self, fm: FamilyModel, row: int, budget: float) -> float:
        grid = fm.candidates.iloc[row]
        samples = self._samples(fm, row, budget)
        error = fm.error_fit.predict(N=float(grid["params"]), D=float(samples),
                                     unique=self.model.unique)
        return float(1 - error)

    def _option(self, fm: FamilyModel, row: int, budget: float) -> Option:
        grid = fm.candidates.iloc[row]
        samples = self._samples(fm, row, budget)
        unique = self.model.unique
        loss = estimate(fm.loss_fit, float(grid["params"]), samples, unique)
        error = estimate(fm.error_fit, float(grid["params"]), samples, unique)
        accuracy = Estimate(1 - error.value,
                            None if error.upper is None else max(0.0, 1 - error.upper),
                            None if error.lower is None else 1 - error.lower)
        latency = train_seconds = None
        if fm.latency is not None:
            value, lower, upper = fm.latency.predict([grid["flops_per_sample"]])
            latency = Estimate(float(value[0]), float(lower[0]), float(upper[0]))
        if fm.train_time is not None:
            value, lower, upper = fm.train_time.predict([grid["train_flops_per_sample"]])
            train_seconds = Estimate(float(value[0] * samples), float(lower[0] * samples),
                                     float(upper[0] * samples))
        return Option(
            family=fm.family, width=float(grid["width"]), depth=int(grid["depth"]),
            params=int(grid["params"]), flops_per_sample=int(grid["flops_per_sample"]),
            train_flops_per_sample=int(grid["train_flops_per_sample"]),
            train_flops=float(samples * grid["train_flops_per_sample"]), samples_seen=samples,
            epochs=samples / unique,
            effective_samples=float(effective_data(samples, unique, fm.loss_fit.r_star)),
            predicted_test_loss=loss, predicted_accuracy=accuracy,
            predicted_latency_p90_ms=latency,
            latency_threads=None if fm.latency is None else fm.latency.threads,
            predicted_train_seconds=train_seconds,
            train_threads=None if fm.train_time is None else fm.train_time.threads)

    def _smallest_budget(self, families: list[FamilyModel]) -> float:
        return min(float(fm.candidates["train_flops_per_sample"].min()) * MIN_SAMPLES
                   for fm in families)

    def _least_budget(self, families: list[FamilyModel], low: float, high: float,
                      reaches: Callable[[FamilyModel, int, float], bool],
                      max_latency_ms: float | None) -> float | None:
        """The least budget in [low, high] whose best configuration ``reaches`` the goal:
        a log grid, then bisection between the last miss and the first hit."""
        decades = max(math.log10(high / low), 1e-9)
        budgets = np.geomspace(low, high, max(2, math.ceil(decades * GRID_PER_DECADE) + 1))
        best = self._best(families, budgets, max_latency_ms)
        hits = [i for i, b in enumerate(best) if b is not None and reaches(b[0], b[1], budgets[i])]
        if not hits:
            return None
        if hits[0] == 0:
            return float(budgets[0])
        lo, hi = math.log(budgets[hits[0] - 1]), math.log(budgets[hits[0]])
        for _ in range(40):
            mid = (lo + hi) / 2
            found = self._best(families, np.array([math.exp(mid)]), max_latency_ms)[0]
            if found is not None and reaches(found[0], found[1], math.exp(mid)):
                hi = mid
            else:
                lo = mid
        return math.exp(hi)

    # -- answering ---------------------------------------------------------------------

    def advise(self, budget_flops: float, *, families: Sequence[str] | None = None,
               max_latency_ms: float | None = None) -> Advice:
        """The best configuration for ``budget_flops`` training FLOPs, with alternatives."""
        check_positive(budget_flops, "--flops")
        if max_latency_ms is not None:
            check_positive(max_latency_ms, "--max-latency-ms")
        chosen = self._families(families)
        ranked, spans = self._ranked(chosen, float(budget_flops), max_latency_ms)
        budgets = np.array([float(budget_flops)])
        found = self._best(ranked, budgets, max_latency_ms)[0]
        if found is None:
            smallest = self._smallest_budget(ranked)
            if budget_flops < smallest:
                raise MlscaleError(f"a budget of {budget_flops:.3g} FLOPs is too small: the "
                                   f"cheapest configuration needs {smallest:.3g} FLOPs for "
                                   f"{MIN_SAMPLES} samples")
            if max_latency_ms is None:  # every prediction is NaN: the fits are degenerate
                names = ", ".join(f.family for f in ranked)
                raise MlscaleError(f"no fitted family gives a usable prediction at "
                                   f"{budget_flops:.3g} FLOPs ({names}); register runs over "
                                   "more model and data sizes")
            raise MlscaleError(f"no configuration is predicted to serve within {max_latency_ms:g}"
                               " ms at p90 (batch 1); raise --max-latency-ms")
        fm, row = found
        option = self._option(fm, row, budget_flops)
        alternatives = self._alternatives(chosen, ranked, option, budget_flops, max_latency_ms)
        verdict = rank_families(
            option, [alt.option for alt in alternatives
                     if alt.kind == f"best_{alt.option.family}"],
            {f.family for f in chosen} - {f.family for f in ranked})
        return Advice(
            dataset=self.model.dataset, budget_flops=float(budget_flops), recommendation=option,
            nearest_registered_model=nearest_run(fm, option),
            alternatives=alternatives,
            warnings=advice_warnings(fm, option, budget_flops, alternatives,
                                     self.model.unique)
            + [f"{other.family} is not ranked: its fit is too weak here ("
               + (f"the 95% interval on its test loss spans {spans[other.family]:.3g}x"
                  if math.isfinite(spans[other.family]) else "it has no finite interval")
               + f", against {spans[fm.family]:.3g}x for {fm.family}); see its alternative"
               for other in chosen if other.family not in {f.family for f in ranked}
               and other.family in spans],
            train_command=(f"mlscale train --arch {option.family} --width {option.width:g} "
                           f"--depth {option.depth} --max-train-flops {option.train_flops:.6g} "
                           f"--dataset {self.model.dataset}"),
            fits={name: fit_summary(f) for name, f in self.model.families.items()},
            families=[f.family for f in chosen], max_latency_ms=max_latency_ms,
            registry={"versions": self.model.versions, "fingerprint": self.model.fingerprint,
                      "from_cache": self.from_cache, "unique_samples": self.model.unique,
                      "families_without_fit": self.model.skipped},
            verdict=verdict, low_confidence=low_confidence_reasons(fm, option))

    def least_flops(self, target_accuracy: float, *, families: Sequence[str] | None = None,
                    max_latency_ms: float | None = None) -> Advice:
        """The least budget predicted to reach ``target_accuracy``, answered as ``advise``."""
        check_target(target_accuracy)
        if max_latency_ms is not None:
            check_positive(max_latency_ms, "--max-latency-ms")
        every = self._families(families)
        low = self._smallest_budget(every)
        ceiling = 1e24  # far past any sane budget: what "unbounded compute" means here

        def reaches(fm: FamilyModel, row: int, budget: float) -> bool:
            return self._accuracy(fm, row, budget) >= target_accuracy

        # Rank where the registry has data, then again at the answer (as advise will).
        reference = max(fm.largest_run_flops for fm in every)
        chosen, _ = self._ranked(every, reference, max_latency_ms)
        least = self._least_budget(chosen, low, ceiling, reaches, max_latency_ms)
        if least is not None:
            again, _ = self._ranked(every, least, max_latency_ms)
            if {f.family for f in again} != {f.family for f in chosen}:
                chosen = again
                least = self._least_budget(chosen, low, ceiling, reaches, max_latency_ms)
        if least is None:
            best = self._best(chosen, np.array([ceiling]), max_latency_ms)[0]
            if best is None:
                raise MlscaleError(f"no configuration is predicted to serve within "
                                   f"{max_latency_ms:g} ms at p90 (batch 1); raise "
                                   "--max-latency-ms")
            raise MlscaleError(
                f"no configuration is predicted to reach {target_accuracy:.2%} test accuracy "
                f"on {self.model.dataset}; the best with unbounded compute is "
                f"{self._accuracy(best[0], best[1], ceiling):.3%} ({best[0].family})")
        advice = self.advise(least, families=families, max_latency_ms=max_latency_ms)
        advice.target_accuracy = float(target_accuracy)
        return advice

    def _alternatives(self, chosen: list[FamilyModel], ranked: list[FamilyModel], best: Option,
                      budget: float, max_latency_ms: float | None) -> list[Alternative]:
        alternatives = []
        goal = best.predicted_accuracy.value - SAME_ACCURACY
        low = min(self._smallest_budget(ranked), budget)

        def close_enough(fm: FamilyModel, row: int, c: float) -> bool:
            return self._accuracy(fm, row, c) >= goal

        cheapest = self._least_budget(ranked, low, budget, close_enough, max_latency_ms)
        if cheapest is not None:
            found = self._best(ranked, np.array([cheapest]), max_latency_ms)[0]
            assert found is not None
            alternatives.append(Alternative(
                "cheapest_within_0.1_points",
                f"{100 * cheapest / budget:.2g}% of the budget for accuracy within 0.1 points",
                self._option(found[0], found[1], cheapest)))
        fastest = self._fastest_within(ranked, goal, budget, max_latency_ms)
        if fastest is not None and (fastest.family, fastest.width, fastest.depth) != (
                best.family, best.width, best.depth):
            assert fastest.predicted_latency_p90_ms is not None
            alternatives.append(Alternative(
                "fastest_within_0.1_points",
                f"p90 {fastest.predicted_latency_p90_ms.value:.3g} ms at batch 1 for accuracy "
                "within 0.1 points", fastest))
        if max_latency_ms is not None:
            free = self._best(ranked, np.array([budget]), None)[0]
            if free is not None:
                option = self._option(free[0], free[1], budget)
                if option.predicted_test_loss.value < best.predicted_test_loss.value:
                    alternatives.append(Alternative(
                        "best_without_latency_limit",
                        f"what the {max_latency_ms:g} ms limit costs", option))
        for fm in chosen:
            if fm.family == best.family:
                continue
            found = self._best([fm], np.array([budget]), max_latency_ms)[0]
            if found is not None:
                weak = "" if fm.family in {f.family for f in ranked} else " (weak fit: not ranked)"
                alternatives.append(Alternative(f"best_{fm.family}",
                                                f"the best {fm.family} for this budget{weak}",
                                                self._option(found[0], found[1], budget)))
        return alternatives

    def _fastest_within(self, chosen: list[FamilyModel], goal: float, budget: float,
                        max_latency_ms: float | None) -> Option | None:
        """The configuration with the lowest predicted p90 among those within 0.1 points."""
        fastest: tuple[float, FamilyModel, int] | None = None
        for fm in chosen:
            if fm.latency is None:
                continue
            loss, samples = self._losses(fm, np.array([budget]), max_latency_ms)
            grid = fm.candidates
            error = fm.error_fit.predict(N=grid["params"].to_numpy(dtype=float),
                                         D=np.maximum(samples[0], 1.0), unique=self.model.unique)
            p90, _, _ = fm.latency.predict(grid["flops_per_sample"].to_numpy())
            ok = np.isfinite(loss[0]) & (1 - error >= goal)
            if ok.any():
                row = int(np.flatnonzero(ok)[np.argmin(p90[ok])])
                if fastest is None or p90[row] < fastest[0]:
                    fastest = (float(p90[row]), fm, row)
        return None if fastest is None else self._option(fastest[1], fastest[2], budget)
