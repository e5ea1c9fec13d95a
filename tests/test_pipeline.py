from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from mlscale.errors import MlscaleError
from mlscale.pipeline import load_pipeline, parse_pipeline
from mlscale.search._proposals import _sampler, _suggest

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


@pytest.mark.parametrize("path", PIPELINES, ids=lambda path: path.stem)
def test_the_shipped_pipelines_propose_forty_trials_under_their_own_sampler(path: Path
                                                                           ) -> None:
    """Per-family ranges (a family's own fixed depth, its own LR range) under one Optuna
    study: each knob keeps one distribution per name, and the proposals stay in range."""
    pipeline = load_pipeline(path)
    study = optuna.create_study(directions=["minimize"] * len(pipeline.objectives))
    study.sampler = _sampler(pipeline)
    trials = 40
    if pipeline.sampler == "grid":  # a grid stops the study once it has proposed each point
        trials = min(trials, len(pipeline.families) * math.prod(
            len(spec.values or ()) for spec in pipeline.space.values()) - 1)
    for number in range(trials):
        trial = study.ask()
        params = _suggest(trial, pipeline)
        for knob, value in params.items():
            spec = pipeline.knob(params["family"], knob) if knob != "family" else None
            if spec is not None and spec.values is None:
                assert spec.bounds[0] <= value <= spec.bounds[1], (knob, value)
        study.tell(trial, [float(number % 7)] * len(pipeline.objectives))
    families = {t.params["family"] for t in study.trials}
    assert len(families) >= min(3, len(pipeline.families))


def test_a_family_with_its_own_fixed_knob_keeps_its_value() -> None:
    raw = _valid() | {"families": {"lenet5": {"depth": 2}, "resnet_mini": {}}}
    pipeline = parse_pipeline(raw)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        params = _suggest(trial, pipeline)
        seen.add((params["family"], params["depth"]))
        study.tell(trial, 1.0)
    assert seen == {("lenet5", 2), ("resnet_mini", 1)}


def test_a_valid_pipeline_parses_with_defaults() -> None:
    pipeline = parse_pipeline(_valid())
    assert pipeline.budget_flops == 1e11  # YAML reads 1e11 without a dot as a string
    assert pipeline.sampler == "tpe" and pipeline.pruner == "median"
    assert pipeline.objectives == ("val_loss",)
    depth = pipeline.knob("lenet5", "depth")
    assert depth is not None and depth.values == (1,)


def test_a_family_may_have_its_own_lr_range_or_none() -> None:
    raw = _valid() | {"families": {"lenet5": {"lr": {"low": 3e-3, "high": 3e-2}},
                                   "resnet_mini": None}}
    pipeline = parse_pipeline(raw)
    assert pipeline.knob("lenet5", "lr").bounds == (3e-3, 3e-2)  # type: ignore[union-attr]
    assert pipeline.knob("resnet_mini", "lr").bounds == (1e-3, 1e-2)  # type: ignore[union-attr]
    del raw["search_space"]["lr"]  # no range at all: each family trains at its default LR
    assert parse_pipeline(raw).knob("resnet_mini", "lr") is None


def _grid(families: dict[str, Any]) -> dict[str, Any]:
    return _valid() | {"sampler": "grid", "pruner": "none", "families": families,
                       "search_space": {"width": [0.5, 1.0], "depth": [1],
                                        "train_size": [500, 1000], "epochs": [1]}}


def test_a_grid_gives_each_family_its_own_fixed_lr_and_visits_each_point_once() -> None:
    pipeline = parse_pipeline(_grid({"lenet5": {"lr": [3e-2]}, "resnet_mini": {"lr": [1e-2]}}))
    study = optuna.create_study(sampler=_sampler(pipeline))
    points = []
    for _ in range(7):  # of 2 families x 2 widths x 2 train sizes (the 8th stops the study)
        trial = study.ask()
        params = _suggest(trial, pipeline)
        points.append((params["family"], params["width"], params["train_size"], params["lr"]))
        study.tell(trial, 1.0)
    assert len(set(points)) == 7
    assert {(family, lr) for family, *_, lr in points} == {("lenet5", 3e-2),
                                                             ("resnet_mini", 1e-2)}


def test_a_grid_refuses_a_family_list_of_several_values() -> None:
    with pytest.raises(MlscaleError, match=r"families\.lenet5\.lr has several"):
        parse_pipeline(_grid({"lenet5": {"lr": [1e-2, 3e-2]}, "resnet_mini": {}}))


MAIN_JOB_GRIDS = ("lineage_lenet5", "lineage_widths", "lineage_sizes", "efficientnet_widths",
                  "efficientnet_sizes")


def test_the_main_job_grids_give_every_family_5_model_and_5_data_sizes_over_10x() -> None:
    """Enough for each family's L(N), L(D) (3 parameters on 5 points), saturation point and
    law selection, and sizes spanning 10x in parameters and in data."""
    from mlscale.measure import count_params
    from mlscale.models import get_model

    params: dict[str, set[int]] = {}
    sizes: dict[str, set[int]] = {}
    for name in MAIN_JOB_GRIDS:
        pipeline = load_pipeline(Path(PIPELINES[0]).parent / f"{name}.yaml")
        assert pipeline.sampler == "grid"
        depth = int((pipeline.space["depth"].values or (0,))[0])
        for family in pipeline.families:
            params.setdefault(family, set()).update(
                count_params(get_model(family, width=w, depth=depth))
                for w in pipeline.space["width"].values or ())
            sizes.setdefault(family, set()).update(pipeline.space["train_size"].values or ())
    assert len(params) == 6
    for family in params:
        assert len(params[family]) >= 5 and max(params[family]) >= 10 * min(params[family])
        assert len(sizes[family]) >= 5 and max(sizes[family]) >= 10 * min(sizes[family])


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
        ("families", {"lenet5": {"train_size": 1}}, "families.lenet5: unknown key(s) "
         "train_size"),
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


def test_a_family_searches_its_own_declared_ranges_where_the_pipeline_gives_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _valid()
    del raw["search_space"]["width"], raw["search_space"]["depth"]
    pipeline = parse_pipeline(raw)
    lenet = pipeline.knob("lenet5", "width")
    assert lenet is not None and (lenet.bounds, lenet.log) == ((0.1, 8.0), True)
    depth = pipeline.knob("resnet_mini", "depth")
    assert depth is not None and depth.log is False
    (tmp_path / "open_dials.py").write_text(
        "from torch import nn\n"
        "def net(*, width=1.0, depth=1, in_channels=1, num_classes=10, image_size=28):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(784, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    raw["families"] = ["open_dials:net"]
    with pytest.raises(MlscaleError, match=r"families\.open_dials:net: no width range \(set "
                       r"search_space\.width or families\.open_dials:net\.width, or declare "
                       r"width_range on the family's builder\)"):
        parse_pipeline(raw)
    (tmp_path / "from_zero.py").write_text(
        (tmp_path / "open_dials.py").read_text() + "net.width_range = (0.0, 4.0)\n")
    raw["families"] = ["from_zero:net"]
    with pytest.raises(MlscaleError, match=r"families\.from_zero:net\.width \(the family's "
                       r"declared width_range\)\.low: must be > 0, got 0\.0"):
        parse_pipeline(raw)
    grid = _valid() | {"sampler": "grid"}
    grid["search_space"] = {"depth": [1], "train_size": [500], "epochs": [1]}
    with pytest.raises(MlscaleError, match=r"families\.lenet5: no width range"):
        parse_pipeline(grid)


def test_a_misspelt_key_is_named_before_the_dataset_is_read() -> None:
    raw = _valid()
    raw["dataset"] = "npz:/nowhere/data.npz"
    raw["search_space"]["widht"] = raw["search_space"].pop("width")
    with pytest.raises(MlscaleError, match="widht"):
        parse_pipeline(raw)
