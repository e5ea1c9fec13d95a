"""Declarative search definitions: ``pipelines/*.yaml`` loaded into validated dataclasses.

A pipeline names a dataset, the model families, a search space (one range or list of
values per knob, with per-family overrides for ``width``, ``depth`` and ``lr``), a total budget
in training FLOPs, a per-trial cap, the sampler, the pruner and the objectives. Unknown
keys, wrong types and impossible ranges are one-line errors naming the key.

>>> pipeline = load_pipeline("pipelines/quickstart.yaml")   # doctest: +SKIP
>>> pipeline.budget_flops                                   # doctest: +SKIP
1e+13
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mlscale.errors import MlscaleError

__all__ = ["KNOBS", "OBJECTIVES", "PRUNERS", "SAMPLERS", "Pipeline", "Range", "load_pipeline",
           "parse_pipeline"]

SAMPLERS = ("tpe", "random", "grid", "nsga2")
PRUNERS = ("median", "hyperband", "none")
OBJECTIVES = ("val_loss", "latency_p90_ms")
# Each knob: (integer-valued, lowest allowed value).
KNOBS: dict[str, tuple[bool, float]] = {
    "width": (False, 0.0), "depth": (True, 0), "train_size": (True, 1), "epochs": (True, 1),
    "train_flops": (False, 1.0), "lr": (False, 0.0), "batch_size": (True, 1),
}
FAMILY_KNOBS = ("width", "depth", "lr")


@dataclass(frozen=True)
class Range:
    """One knob's search range: ``low``..``high`` (optionally log-scaled) or fixed ``values``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    values: tuple[float, ...] | None = None

    @property
    def bounds(self) -> tuple[float, float]:
        if self.values is not None:
            return min(self.values), max(self.values)
        assert self.low is not None and self.high is not None
        return self.low, self.high


@dataclass(frozen=True)
class Pipeline:
    """A validated search definition."""

    name: str
    dataset: str
    families: tuple[str, ...]
    space: Mapping[str, Range]  # knob -> range, shared by every family
    family_space: Mapping[str, Mapping[str, Range]]  # family -> width/depth/lr overrides
    budget_flops: float
    trial_flops_cap: float | None = None
    sampler: str = "tpe"
    pruner: str = "median"
    objectives: tuple[str, ...] = ("val_loss",)
    seed: int = 0
    val_size: int | None = None  # None: the trainer's default (5000, less for small datasets)
    evaluations: int | None = 4  # validations per trial, evenly spaced; None: every epoch
    latency_seconds: float = 0.1
    source: str = field(default="", compare=False)

    def knob(self, family: str, name: str) -> Range | None:
        """The range of ``name`` for ``family`` (its override, else the shared one)."""
        return self.family_space.get(family, {}).get(name) or self.space.get(name)

    def with_budget(self, budget_flops: float) -> Pipeline:
        from dataclasses import replace

        _check_positive("budget_flops", budget_flops)
        return replace(self, budget_flops=budget_flops)


def _number(key: str, value: Any) -> float:
    """A finite number from YAML (which reads ``1e12`` without a dot as a string)."""
    if isinstance(value, bool):
        raise MlscaleError(f"{key}: expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MlscaleError(f"{key}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise MlscaleError(f"{key}: expected a finite number, got {value!r}")
    return number


def _check_positive(key: str, value: float) -> None:
    if not value > 0:
        raise MlscaleError(f"{key}: must be positive, got {value:g}")


def _check_keys(key: str, given: Mapping[str, Any], allowed: set[str] | tuple[str, ...]) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise MlscaleError(f"{key}: unknown key(s) {', '.join(unknown)}; "
                           f"allowed: {', '.join(sorted(allowed))}")


def _parse_range(key: str, knob: str, raw: Any) -> Range:
    integer, lowest = KNOBS[knob]

    def value(name: str, item: Any) -> float:
        number = _number(name, item)
        if integer and number != int(number):
            raise MlscaleError(f"{name}: expected an integer, got {item!r}")
        if number < lowest or (number == lowest == 0.0 and not integer):
            raise MlscaleError(f"{name}: must be {'>=' if integer else '>'} {lowest:g}, "
                               f"got {item!r}")
        return int(number) if integer else number

    if not isinstance(raw, Mapping):
        if isinstance(raw, list):
            raw = {"values": raw}
        else:
            return Range(values=(value(key, raw),))
    _check_keys(key, raw, {"low", "high", "log", "values"})
    if "values" in raw:
        if set(raw) != {"values"}:
            raise MlscaleError(f"{key}: give either values or low/high, not both")
        if not isinstance(raw["values"], list) or not raw["values"]:
            raise MlscaleError(f"{key}.values: expected a non-empty list")
        values = tuple(value(f"{key}.values", item) for item in raw["values"])
        if len(set(values)) != len(values):
            raise MlscaleError(f"{key}.values: duplicates in {list(values)}")
        return Range(values=values)
    if "low" not in raw or "high" not in raw:
        raise MlscaleError(f"{key}: needs low and high (or values)")
    low, high = value(f"{key}.low", raw["low"]), value(f"{key}.high", raw["high"])
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise MlscaleError(f"{key}.log: expected true or false, got {log!r}")
    if low > high:
        raise MlscaleError(f"{key}: low {low:g} is above high {high:g}")
    return Range(low=low, high=high, log=log)


def _parse_space(key: str, raw: Any, allowed: tuple[str, ...]) -> dict[str, Range]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise MlscaleError(f"{key}: expected a mapping of knob: range")
    _check_keys(key, raw, allowed)
    return {knob: _parse_range(f"{key}.{knob}", knob, spec) for knob, spec in raw.items()}


def _check_family_ranges(family: str, key: str, space: Mapping[str, Range]) -> None:
    from mlscale.models import model_spec

    spec = model_spec(family)
    for knob, allowed in (("width", spec.width_range), ("depth", spec.depth_range)):
        if knob in space:
            low, high = space[knob].bounds
            if low < allowed[0] or high > allowed[1]:
                raise MlscaleError(f"{key}.{knob}: [{low:g}, {high:g}] lies outside {family}'s "
                                   f"range [{allowed[0]:g}, {allowed[1]:g}]")


def _check_dataset_sizes(dataset: str, space: Mapping[str, Range], val_size: int | None
                         ) -> None:
    """val_size and every train_size against the dataset's train split, before any trial."""
    from mlscale.data import default_val_size, split_sizes

    total = split_sizes(dataset).train
    if val_size is None:
        val_size = default_val_size(total)
    if val_size >= total:
        raise MlscaleError(f"val_size: {val_size} leaves no training data ({dataset}'s train "
                           f"split has {total} samples)")
    highest = space["train_size"].bounds[1]
    if highest > total - val_size:
        raise MlscaleError(f"search_space.train_size: {highest:g} is above the "
                           f"{total - val_size} samples {dataset}'s train split has after "
                           f"val_size {val_size}")


def _check_trial_flops_buy_a_sample(dataset: str, families: tuple[str, ...],
                                    space: Mapping[str, Range],
                                    family_space: Mapping[str, Mapping[str, Range]]) -> None:
    """The lowest per-trial train_flops must pay for one sample of the cheapest model."""
    from mlscale.data import dataset_info
    from mlscale.measure import cost_of

    info = dataset_info(dataset)
    cheapest = math.inf
    for family in families:
        width = (family_space[family].get("width") or space["width"]).bounds[0]
        depth = (family_space[family].get("depth") or space["depth"]).bounds[0]
        cost = cost_of(family, width, int(depth), info.input_shape, info.num_classes)
        cheapest = min(cheapest, cost.train_flops_per_sample)
    lowest = space["train_flops"].bounds[0]
    if lowest < cheapest:
        raise MlscaleError(f"search_space.train_flops: {lowest:g} FLOPs per trial cannot buy "
                           f"one sample (the cheapest model in the space costs {cheapest:,} "
                           f"training FLOPs per sample)")


def parse_pipeline(raw: Any, source: str = "<pipeline>") -> Pipeline:
    """Validate a pipeline read from YAML; every error names the offending key."""
    if not isinstance(raw, Mapping):
        raise MlscaleError(f"{source}: expected a mapping at the top level")
    allowed = {f.name for f in fields(Pipeline)} - {"space", "family_space", "source"}
    _check_keys(source, raw, allowed | {"search_space"})
    for required in ("name", "dataset", "families", "search_space", "budget_flops"):
        if required not in raw:
            raise MlscaleError(f"{source}: missing key {required}")
    families = _parse_families(raw["families"])
    space = _parse_space("search_space", raw["search_space"], tuple(KNOBS))
    family_space = {family: _parse_space(f"families.{family}", spec, FAMILY_KNOBS)
                    for family, spec in families.items()}
    _check_dataset(raw["dataset"])  # after the keys: a typo is named before data is read
    if raw.get("sampler") != "grid":  # a grid's points are lists the pipeline writes
        _fill_declared_ranges(space, family_space)
    _check_space(space, family_space)
    budget = _number("budget_flops", raw["budget_flops"])
    _check_positive("budget_flops", budget)
    cap = raw.get("trial_flops_cap")
    cap = None if cap is None else _number("trial_flops_cap", cap)
    if cap is not None:
        _check_positive("trial_flops_cap", cap)
    sampler, pruner = raw.get("sampler", "tpe"), raw.get("pruner", "median")
    if sampler not in SAMPLERS:
        raise MlscaleError(f"sampler: {sampler!r} is not one of {', '.join(SAMPLERS)}")
    if pruner not in PRUNERS:
        raise MlscaleError(f"pruner: {pruner!r} is not one of {', '.join(PRUNERS)}")
    objectives = _parse_objectives(raw.get("objectives", ["val_loss"]))
    if sampler == "grid":
        _check_grid(space, family_space)
    name = raw["name"]
    if not isinstance(name, str) or not name.strip():
        raise MlscaleError(f"name: expected a non-empty string, got {name!r}")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise MlscaleError(f"seed: expected an integer, got {seed!r}")
    val_size = _positive_int_or_null("val_size", raw.get("val_size"))
    evaluations = _positive_int_or_null("evaluations", raw.get("evaluations", 4))
    latency_seconds = _number("latency_seconds", raw.get("latency_seconds", 0.1))
    _check_positive("latency_seconds", latency_seconds)
    _check_dataset_sizes(raw["dataset"], space, val_size)
    if "train_flops" in space:
        _check_trial_flops_buy_a_sample(raw["dataset"], tuple(families), space, family_space)
    return Pipeline(name=name, dataset=raw["dataset"], families=tuple(families),
                    space=space, family_space=family_space, budget_flops=budget,
                    trial_flops_cap=cap, sampler=sampler, pruner=pruner,
                    objectives=objectives, seed=seed, val_size=val_size,
                    evaluations=evaluations, latency_seconds=latency_seconds, source=source)


def _check_dataset(dataset: Any) -> None:
    """A built-in dataset's name or a user source (``npz:``, ``imagefolder:``, ...)."""
    from mlscale.data import DATASETS

    if isinstance(dataset, str) and ":" in dataset:  # a user source
        from mlscale.sources import check_source

        try:
            check_source(dataset)
        except MlscaleError as error:
            raise MlscaleError(f"dataset: {error}") from None
    elif dataset not in DATASETS:
        raise MlscaleError(f"dataset: unknown dataset {dataset!r}; choose one of: "
                           f"{', '.join(DATASETS)}, npz:PATH, imagefolder:PATH, "
                           "torchvision:NAME")


def _parse_families(raw: Any) -> Mapping[str, Any]:
    """Family name -> its own ranges (None: none), every name one the zoo can build."""
    from mlscale.models import model_spec

    families = {name: None for name in raw} if isinstance(raw, list) else raw
    if not isinstance(families, Mapping) or not families:
        raise MlscaleError("families: expected a non-empty list or mapping of family names")
    for family in families:
        try:
            model_spec(family)  # a zoo name, an entry point or package.module:builder
        except MlscaleError as error:
            raise MlscaleError(f"families: {error}") from None
    return families


def _fill_declared_ranges(space: Mapping[str, Range],
                          family_space: dict[str, dict[str, Range]]) -> None:
    """A family's own declared width and depth ranges where the pipeline gives none, read
    as if written under ``families.NAME`` (the width on a log scale where it starts above 0,
    as width multipliers are searched)."""
    from mlscale.models import model_spec

    for family, own in family_space.items():
        for knob in ("width", "depth"):
            declared = model_spec(family).finite_range(knob)
            if knob not in space and knob not in own and declared is not None:
                low, high = declared
                own[knob] = _parse_range(
                    f"families.{family}.{knob} (the family's declared {knob}_range)", knob,
                    {"low": low, "high": high, "log": knob == "width" and low > 0})


def _check_space(space: Mapping[str, Range],
                 family_space: Mapping[str, Mapping[str, Range]]) -> None:
    """The knobs a trial needs are there, and every family's dials lie in its ranges."""
    if "train_size" not in space:
        raise MlscaleError("search_space: missing train_size")
    if ("epochs" in space) == ("train_flops" in space):
        raise MlscaleError("search_space: give exactly one of epochs and train_flops")
    for family, own in family_space.items():
        for knob in ("width", "depth"):  # no lr range: the family's default lr
            if knob not in space and knob not in own:
                raise MlscaleError(f"families.{family}: no {knob} range (set search_space."
                                   f"{knob} or families.{family}.{knob}, or declare "
                                   f"{knob}_range on the family's builder)")
        _check_family_ranges(family, "search_space", {
            k: v for k, v in space.items() if k in FAMILY_KNOBS and k not in own})
        _check_family_ranges(family, f"families.{family}", own)


def _parse_objectives(raw: Any) -> tuple[str, ...]:
    objectives = [raw] if isinstance(raw, str) else raw
    if (not isinstance(objectives, list) or not objectives or objectives[0] != "val_loss"
            or any(o not in OBJECTIVES for o in objectives)
            or len(set(objectives)) != len(objectives)):
        raise MlscaleError(f"objectives: expected [val_loss] or [val_loss, latency_p90_ms], "
                           f"got {objectives!r}")
    return tuple(objectives)


def _check_grid(space: Mapping[str, Range],
                family_space: Mapping[str, Mapping[str, Range]]) -> None:
    """A grid lists every knob's values, and a family's own knob has one value."""
    own = [(f"families.{family}.{knob}", r) for family, ranges in family_space.items()
           for knob, r in ranges.items()]
    ranged = [key for key, r in [*space.items(), *own] if r.values is None]
    if ranged:
        raise MlscaleError(f"sampler grid: every knob needs a list of values; "
                           f"{ranged[0]} has a range")
    several = [key for key, r in own if len(r.values or ()) != 1]
    if several:  # the grid is a product: a family's own list would multiply every other's
        raise MlscaleError(f"sampler grid: a family's own knob takes one value; "
                           f"{several[0]} has several (list them in search_space)")


def _positive_int_or_null(key: str, value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
        raise MlscaleError(f"{key}: expected a positive integer or null, got {value!r}")
    return value


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and validate a pipeline YAML file."""
    from mlscale.checks import load_yaml_file

    path = Path(path)
    raw = load_yaml_file(path, "pipeline")
    if isinstance(raw, dict) and isinstance(raw.get("dataset"), str):
        raw["dataset"] = _anchored_source(raw["dataset"], path.parent)
    return parse_pipeline(raw, str(path))


def _anchored_source(dataset: str, folder: Path) -> str:
    """A user source's relative path read against the pipeline file's folder."""
    kind, _, argument = dataset.partition(":")
    if kind not in ("npz", "imagefolder") or not argument or Path(argument).expanduser(
            ).is_absolute():
        return dataset
    return f"{kind}:{(folder / argument).resolve()}"
