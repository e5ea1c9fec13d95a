from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mlscale.errors import MlscaleError
from mlscale.pipeline import load_pipeline, parse_pipeline

PIPELINES = sorted(Path(__file__).resolve().parents[1].joinpath("pipelines").glob("*.yaml"))


def _valid() -> dict[str, Any]:
    return {
        "name": "t", "dataset": "mnist", "families": ["lenet5", "resnet_mini"],
        "search_space": {"width": {"low": 0.25, "high": 1.0, "log": True}, "depth": 1,
                         "train_size": {"low": 500, "high": 2000}, "epochs": [1, 2],
                         "lr": {"low": 1e-3, "high": 1e-2, "log": True}},
        "budget_flops": "1e11",
    }


def test_the_shipped_pipelines_load() -> None:
    names = {load_pipeline(path).name for path in PIPELINES}
    assert {"quickstart", "lenet_scaling", "zoo_budget"} <= names


def test_a_valid_pipeline_parses_with_defaults() -> None:
    pipeline = parse_pipeline(_valid())
    assert pipeline.budget_flops == 1e11  # YAML reads 1e11 without a dot as a string
    assert pipeline.sampler == "tpe" and pipeline.pruner == "median"
    assert pipeline.objectives == ("val_loss",)
    depth = pipeline.knob("lenet5", "depth")
    assert depth is not None and depth.values == (1,)


def _with(path: str, value: Any) -> dict[str, Any]:
    raw = _valid()
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return raw


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("budgetflops", 1, "unknown key(s) budgetflops"),
        ("search_space.widht", 1.0, "search_space: unknown key(s) widht"),
        ("budget_flops", "lots", "budget_flops: expected a number"),
        ("budget_flops", -5, "budget_flops: must be positive"),
        ("budget_flops", ".nan", "budget_flops: expected a number"),
        ("search_space.width", {"low": 1.0, "high": 0.5}, "search_space.width: low 1 is above"),
        ("search_space.width", {"low": 0.05, "high": 1.0},
         "lies outside lenet5's range [0.1, 8]"),
        ("search_space.train_size", {"low": 0, "high": 10}, "search_space.train_size.low"),
        ("search_space.epochs", {"low": 1.5, "high": 2}, "expected an integer"),
        ("search_space.lr", {"low": 1e-3}, "search_space.lr: needs low and high"),
        ("search_space.train_flops", {"low": 1e9, "high": 1e10},
         "exactly one of epochs and train_flops"),
        ("families", ["lenet5", "transformer"], "unknown architecture 'transformer'"),
        ("families", {"lenet5": {"lr": 1}}, "families.lenet5: unknown key(s) lr"),
        ("dataset", "imagenet", "dataset: unknown dataset 'imagenet'"),
        ("sampler", "bayes", "sampler: 'bayes' is not one of"),
        ("pruner", "asha", "pruner: 'asha' is not one of"),
        ("objectives", ["accuracy"], "objectives: expected [val_loss]"),
        ("seed", "zero", "seed: expected an integer"),
        ("name", _DELETE, "missing key name"),
        ("sampler", "grid", "sampler grid: every knob needs a list of values"),
    ],
)
def test_bad_pipelines_are_one_line_errors_naming_the_key(path: str, value: Any,
                                                          message: str) -> None:
    with pytest.raises(MlscaleError) as error:
        parse_pipeline(_with(path, value))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(MlscaleError, match="cannot read pipeline"):
        load_pipeline(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(MlscaleError, match="not valid YAML"):
        load_pipeline(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(MlscaleError, match="expected a mapping at the top level"):
        load_pipeline(listed)
