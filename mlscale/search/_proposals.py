"""What a trial trains: its knobs suggested from the pipeline, the sampler and the pruner."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlscale.pipeline import KNOBS, Pipeline, Range
from mlscale.search._attrs import DATA_FINGERPRINT, DATASET
from mlscale.search._concurrency import (
    per_trial_seeds,
)

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution


def _suggest(trial: optuna.Trial, pipeline: Pipeline) -> dict[str, Any]:
    family = trial.suggest_categorical("family", list(pipeline.families))
    params: dict[str, Any] = {"family": family}
    for knob in KNOBS:
        spec = pipeline.knob(family, knob)
        if spec is not None:
            params[knob] = _suggest_range(trial, _param_name(pipeline, family, knob), knob, spec)
    return params


def _param_name(pipeline: Pipeline, family: str, knob: str) -> str:
    """Optuna's name for ``knob`` in a ``family`` trial: the knob itself where the family
    searches the shared range, else ``knob.family``. Optuna keeps one distribution kind per
    name (and a categorical's choices fixed), so a family's own range needs its own name;
    TPE then also models each family's override apart."""
    own = pipeline.family_space.get(family, {}).get(knob)
    return knob if own is None or own == pipeline.space.get(knob) else f"{knob}.{family}"


def _knob_values(trial_params: dict[str, Any]) -> dict[str, Any]:
    """A trial's Optuna parameters by knob (``lr.lenet5`` is the ``lr`` knob)."""
    return {name.partition(".")[0]: value for name, value in trial_params.items()}


def resume_conflict(study: optuna.Study, pipeline: Pipeline, fingerprint: str) -> str | None:
    """Why the pipeline, whose data has content ``fingerprint``, cannot resume ``study``,
    or None.

    Its trials must train on the same data (else the best model, the budget and the
    sampler's history would mix two problems): the same dataset name and, for a user
    source, the same content wherever its files are (workers on other machines see other
    paths). Optuna fixes a parameter's kind (float, int, categorical) and a categorical's
    choices at its first trial and fails every later trial that proposes it otherwise, so
    a pipeline whose families or choices changed must start a new study rather than spend
    trials on failures."""
    from optuna.distributions import CategoricalDistribution

    from mlscale.names import dataset_name

    name, attrs = dataset_name(pipeline.dataset), study.user_attrs
    if attrs.get(DATASET, name) != name:
        return (f"study {study.study_name} trains on {attrs[DATASET]}; this pipeline names "
                f"{name}: pass --study NEW for the other dataset")
    if attrs.get(DATA_FINGERPRINT, fingerprint) != fingerprint:
        return (f"study {study.study_name} trains on other data named {name} (content "
                f"{attrs[DATA_FINGERPRINT]}, not {fingerprint}): pass --study NEW for it")
    wanted = _distributions(pipeline)
    seen: set[str] = set()
    for trial in study.get_trials(deepcopy=False):
        for name, stored in trial.distributions.items():
            if name in seen or name not in wanted:
                continue
            seen.add(name)
            new = wanted[name]
            if type(stored) is not type(new) or (
                    isinstance(stored, CategoricalDistribution)
                    and isinstance(new, CategoricalDistribution)
                    and tuple(stored.choices) != tuple(new.choices)):
                return (f"study {study.study_name} searched {name} over {_describe(stored)}; "
                        f"this pipeline has {_describe(new)}: pass --study NEW for the "
                        "changed search, or run the pipeline the study began with")
    return None


def _distributions(pipeline: Pipeline) -> dict[str, BaseDistribution]:
    """Optuna's parameter name -> distribution for every proposal the pipeline can make."""
    from optuna.distributions import CategoricalDistribution

    found: dict[str, BaseDistribution] = {
        "family": CategoricalDistribution(list(pipeline.families))}
    for family in pipeline.families:
        for knob in KNOBS:
            spec = pipeline.knob(family, knob)
            if spec is not None:
                found[_param_name(pipeline, family, knob)] = _distribution(knob, spec)
    return found


def _distribution(knob: str, spec: Range) -> BaseDistribution:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if spec.values is not None:
        return CategoricalDistribution(list(spec.values))
    low, high = spec.bounds
    if KNOBS[knob][0]:
        return IntDistribution(int(low), int(high), log=spec.log)
    return FloatDistribution(low, high, log=spec.log)


def _describe(distribution: BaseDistribution) -> str:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return "the choices " + ", ".join(map(str, distribution.choices))
    if isinstance(distribution, IntDistribution | FloatDistribution):
        kind = "integers" if isinstance(distribution, IntDistribution) else "floats"
        return f"{kind} in [{distribution.low:g}, {distribution.high:g}]"
    return type(distribution).__name__


def _suggest_range(trial: optuna.Trial, name: str, knob: str, spec: Range) -> Any:
    integer = KNOBS[knob][0]
    if spec.values is not None:
        return trial.suggest_categorical(name, list(spec.values))
    low, high = spec.bounds
    if integer:
        return trial.suggest_int(name, int(low), int(high), log=spec.log)
    return trial.suggest_float(name, low, high, log=spec.log)


def _sampler(pipeline: Pipeline) -> Any:
    """The pipeline's sampler, each trial's proposal a function of the seed and its number."""
    import optuna

    if pipeline.sampler == "grid":
        # Optuna's grid already gives trial n the n-th point of one seeded permutation.
        space: dict[str, list[Any]] = {"family": list(pipeline.families)}
        space |= {k: list(r.values or ()) for k, r in pipeline.space.items()}
        space |= {name: list(r.values or ()) for f, own in pipeline.family_space.items()
                  for k, r in own.items() if (name := _param_name(pipeline, f, k)) != k}
        return optuna.samplers.GridSampler(space, seed=pipeline.seed)

    def make(seed: int) -> optuna.samplers.BaseSampler:
        if pipeline.sampler == "tpe":
            # The constant liar counts other workers' running trials as bad results, so
            # parallel workers explore apart; one worker has none, and is unchanged.
            return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        return {"random": optuna.samplers.RandomSampler,
                "nsga2": optuna.samplers.NSGAIISampler}[pipeline.sampler](seed=seed)

    return per_trial_seeds(make, pipeline.seed)


def _pruner(pipeline: Pipeline) -> Any:
    import optuna

    if pipeline.pruner == "median":
        # Not before the second validation: the first comes right after the LR warm-up.
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if pipeline.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=pipeline.evaluations
                                              or "auto", reduction_factor=3)
    return optuna.pruners.NopPruner()
