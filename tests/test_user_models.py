"""User model families, by import path and by entry point, and the whole pipeline on a
user's family and dataset: train, search, models, latency, fit, budget and the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _byo import write_imagefolder, write_npz
from _cli import run_main
from torch import nn

from mlscale.errors import MlscaleError
from mlscale.measure import measure_model
from mlscale.models import _registry, get_model, list_models, model_spec
from mlscale.names import arch_name, dataset_name
from mlscale.pipeline import parse_pipeline

FAMILY = "test_user_models:tiny_family"  # this module: pytest puts tests/ on sys.path


def tiny_family(*, width: float = 1.0, depth: int = 2, in_channels: int = 1,
                num_classes: int = 10, image_size: int = 28) -> nn.Module:
    """Tiny test family: ``depth`` 3x3 convs of 8 x width channels, global pooling."""
    channels = max(1, round(8 * width))
    layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(channels, num_classes))


def ranged_family(**dials: Any) -> nn.Module:
    return tiny_family(**dials)


ranged_family.width_range = (0.5, 2.0)  # type: ignore[attr-defined]
ranged_family.depth_range = (1, 3)  # type: ignore[attr-defined]


def exploding(**dials: Any) -> nn.Module:
    raise ValueError("boom")


def returns_nothing(**dials: Any) -> None:
    return None


def wrong_classes(*, num_classes: int = 10, **dials: Any) -> nn.Module:
    return tiny_family(num_classes=num_classes + 1, **dials)


def lacks_dials(width: float = 1.0) -> nn.Module:
    return nn.Linear(1, 1)


class _Probe(nn.Module):
    """A linear head on the flattened image, calling ``check(self, x)`` first."""

    def __init__(self, check: Any, in_channels: int, num_classes: int, image_size: int
                 ) -> None:
        super().__init__()
        self.check, self.steps = check, 0
        self.head = nn.Linear(in_channels * image_size * image_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check(self, x)
        return self.head(torch.special.i0(x).flatten(1) if self.check is _bessel
                         else x.flatten(1))


def _raise_in_training(model: _Probe, x: torch.Tensor) -> None:
    if model.training:
        raise ValueError("boom in training")


def _diverge_at_step_3(model: _Probe, x: torch.Tensor) -> None:
    if model.training and len(x) > 2:  # a real batch, not a probe of two images
        model.steps += 1
        if model.steps == 3:
            raise RuntimeError("diverged at step 3")


def _bessel(model: _Probe, x: torch.Tensor) -> None:
    """torch.special.i0 in forward: an operator ONNX's exporter lacks."""


def fails_in_training(*, width: float = 1.0, depth: int = 1, in_channels: int = 1,
                      num_classes: int = 10, image_size: int = 28) -> nn.Module:
    return _Probe(_raise_in_training, in_channels, num_classes, image_size)


def fails_later(*, width: float = 1.0, depth: int = 1, in_channels: int = 1,
                num_classes: int = 10, image_size: int = 28) -> nn.Module:
    return _Probe(_diverge_at_step_3, in_channels, num_classes, image_size)


def bessel(*, width: float = 1.0, depth: int = 1, in_channels: int = 1, num_classes: int = 10,
           image_size: int = 28) -> nn.Module:
    return _Probe(_bessel, in_channels, num_classes, image_size)


@pytest.fixture
def isolated_families(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolved user families forgotten after the test."""
    monkeypatch.setattr(_registry, "_USER_MODELS", {})


def _install_entry_point(site: Path, name: str, target: str) -> None:
    """A real installed distribution: a module and a dist-info with entry_points.txt."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "byo_nets.py").write_text(
        "from test_user_models import tiny_family\n\n"
        "def build(**dials):\n    '''Entry-point family.'''\n    return tiny_family(**dials)\n")
    dist = site / "byo_nets-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: byo-nets\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[mlscale.models]\n{name} = {target}\n")


@pytest.fixture
def entry_point_family(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       isolated_families: None) -> str:
    _install_entry_point(tmp_path / "site", "byonet", "byo_nets:build")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return "byonet"


def test_import_path_family_has_signature_defaults_and_open_ranges(isolated_families: None
                                                                   ) -> None:
    spec = model_spec(FAMILY)
    assert (spec.default_width, spec.default_depth, spec.source) == (1.0, 2, FAMILY)
    assert spec.description.startswith("Tiny test family") and not spec.bounded
    model = get_model(FAMILY, width=2, depth=3, in_channels=3, num_classes=4, image_size=16)
    assert model(torch.zeros(5, 3, 16, 16)).shape == (5, 4)
    direct = tiny_family(width=2, depth=3, in_channels=3, num_classes=4, image_size=16)
    assert measure_model(model, (3, 16, 16), 4) == measure_model(direct, (3, 16, 16), 4)
    ranged = model_spec("test_user_models:ranged_family")
    assert (ranged.width_range, ranged.depth_range, ranged.bounded) == ((0.5, 2.0), (1, 3), True)
    with pytest.raises(MlscaleError, match=r"^width must be in \[0.5, 2\] for test_user_models"
                                           r":ranged_family, got 3$"):
        get_model("test_user_models:ranged_family", width=3)


@pytest.mark.parametrize(("builder", "message"), [
    ("exploding", "family test_user_models:exploding failed at width=1.0, depth=1, "
                  "in_channels=1, num_classes=10, image_size=28: ValueError: boom"),
    ("returns_nothing", "family test_user_models:returns_nothing returned NoneType, not an "
                        "nn.Module, at width=1.0, depth=1"),
    ("wrong_classes", "family test_user_models:wrong_classes: output shape (2, 11) at width=1.0,"
                      " depth=1, in_channels=1, num_classes=10, image_size=28; expected "
                      "(batch, num_classes) = (2, 10)"),
    ("lacks_dials", "family test_user_models:lacks_dials: the builder must accept the keyword "
                    "arguments width, depth, in_channels, num_classes, image_size; it lacks "
                    "depth, in_channels, num_classes, image_size"),
    ("no_such_builder", "family test_user_models:no_such_builder: test_user_models has no "
                        "attribute no_such_builder"),
])
def test_broken_builders_are_one_line_errors(builder: str, message: str,
                                             isolated_families: None) -> None:
    with pytest.raises(MlscaleError) as excinfo:
        get_model(f"test_user_models:{builder}")
    assert str(excinfo.value).startswith(message) and "\n" not in str(excinfo.value)


def test_unknown_module_in_a_pipeline_and_on_the_command_line(
        capsys: pytest.CaptureFixture[str], isolated_families: None) -> None:
    raw = {"name": "t", "dataset": "mnist", "families": ["no_such_module:net"],
           "search_space": {"width": 1.0, "depth": 1, "train_size": 100, "epochs": 1,
                            "lr": 1e-3}, "budget_flops": 1e12}
    with pytest.raises(MlscaleError, match=r"^families: family no_such_module:net: cannot "
                                           r"import no_such_module: No module named"):
        parse_pipeline(raw)
    raw["families"] = {"test_user_models:ranged_family": {"width": {"low": 0.1, "high": 1}}}
    with pytest.raises(MlscaleError, match=r"lies outside test_user_models:ranged_family's"):
        parse_pipeline(raw)
    code, _, err = run_main(capsys, "zoo", "--arch", "test_user_models:exploding")
    assert code == 1 and err.startswith("Error: family test_user_models:exploding failed at")


def test_entry_point_family_is_listed_and_built(entry_point_family: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert entry_point_family in list_models()
    assert model_spec(entry_point_family).source == "byo_nets:build"
    code, out, _ = run_main(capsys, "zoo", "--json")
    rows = {row["arch"]: row for row in json.loads(out)}
    assert code == 0 and rows["byonet"]["source"] == "byo_nets:build"
    # build(**dials) gives no defaults in its signature: width 1, depth 1
    assert (rows["byonet"]["width"], rows["byonet"]["depth"]) == (1.0, 1)
    assert rows["byonet"]["params"] == measure_model(tiny_family(depth=1), (1, 28, 28)).params
    assert rows["byonet"]["width_range"] == [0.0, None] and rows["lenet5"]["source"] is None


def test_entry_point_clashing_with_a_builtin_is_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_families: None) -> None:
    _install_entry_point(tmp_path / "site", "lenet5", "byo_nets:build")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(MlscaleError, match=r"entry point 'lenet5' .*clashes with a built-in"):
        list_models()


def test_registry_names_of_user_families_and_datasets() -> None:
    assert arch_name(FAMILY) == "test_user_models.tiny_family" and arch_name("vgg_mini") == (
        "vgg_mini")
    assert dataset_name("npz:/a/b/my shapes.npz") == "npz-my-shapes"
    assert dataset_name("torchvision:CIFAR10") == "torchvision-cifar10"
    from mlscale.registry import MlflowSettings

    settings = MlflowSettings(tracking_uri="sqlite:///x.db")
    assert settings.model_name("npz:data/shapes.npz", FAMILY) == (
        "npz-shapes-test_user_models.tiny_family")
    assert settings.experiment_name("imagefolder:pets/") == "mlscale-imagefolder-pets"


@pytest.mark.slow
def test_family_imports_from_the_working_directory() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "mlscale", "zoo", "--arch", FAMILY, "--json"],
        cwd=Path(__file__).parent, capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["params"] == measure_model(tiny_family(),
                                                                   (1, 28, 28)).params


def _grid(dataset: str, family: str, sizes: list[int]) -> dict[str, Any]:
    return {"name": "byo", "dataset": dataset, "families": [family], "sampler": "grid",
            "pruner": "none", "latency_seconds": 0.01, "evaluations": 1,
            "budget_flops": 1e12,
            "search_space": {"width": [0.5, 2.0, 8.0], "depth": [2], "train_size": sizes,
                             "epochs": [2], "lr": [5e-3]}}


def _whole_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture[str], dataset: str,
                    family: str, sizes: list[int]) -> dict[str, Any]:
    """search -> models -> latency -> fit -> budget -> report on one user family and
    dataset; returns what each step printed as JSON."""
    import yaml

    pipeline = tmp_path / "byo.yaml"
    pipeline.write_text(yaml.safe_dump(_grid(dataset, family, sizes)))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    outputs: dict[str, Any] = {}
    steps = {
        "search": ["search", str(pipeline), "--storage", storage, "--json"],
        "models": ["models", "--dataset", dataset, "--json"],
        "latency": ["latency", f"models:/{dataset_name(dataset)}-{arch_name(family)}@champion",
                    "--iterations", "5", "--batch-sizes", "1,4", "--json"],
        "fit": ["fit", "--experiment", f"mlscale-{dataset_name(dataset)}", "--arch", family,
                "--law", "nd", "--json"],
        "budget": ["budget", "--flops", "1e10", "--dataset", dataset, "--json"],
        "report": ["report", "latency", "--out", str(tmp_path / "report"), "--no-log",
                   "--dataset", dataset, "--json"],
        "scaling": ["report", "scaling", "--out", str(tmp_path / "scaling"), "--no-log",
                    "--dataset", dataset, "--json"],
    }
    for step, args in steps.items():
        code, out, err = run_main(capsys, *args)
        assert code == 0, f"{step}: {err}"
        outputs[step] = json.loads(out)
    return outputs


@pytest.mark.slow
def test_import_path_family_on_an_npz_dataset_end_to_end(
        tmp_path: Path, fresh_store: str, capsys: pytest.CaptureFixture[str],
        isolated_families: None) -> None:
    dataset = f"npz:{write_npz(tmp_path / 'shapes.npz')}"
    code, out, err = run_main(capsys, "train", "--arch", "lenet5", "--dataset", dataset,
                              "--epochs", "1", "--latency-seconds", "0.01", "--json")
    assert code == 0, err
    assert json.loads(out)["registered"]["name"] == "npz-shapes-lenet5"  # a built-in on user data
    outputs = _whole_pipeline(tmp_path, capsys, dataset, FAMILY, [100, 200, 400])
    assert outputs["search"]["n_trials"] == {"COMPLETE": 9}
    names = {row["name"] for row in outputs["models"]}
    assert names == {"npz-shapes-lenet5", "npz-shapes-test_user_models.tiny_family"}
    assert len(outputs["models"]) == 10 and {row["dataset"] for row in outputs["models"]} == {
        "npz-shapes"}
    expected = measure_model(get_model(FAMILY, width=8.0, depth=2, in_channels=3,
                                       num_classes=4, image_size=16), (3, 16, 16), 4)
    widest = max(outputs["models"], key=lambda row: row["params"] if row["arch"] == FAMILY
                 else 0)
    assert (widest["params"], widest["flops_per_sample"]) == (expected.params,
                                                              expected.flops_per_sample)
    assert {r["batch_size"] for r in outputs["latency"]["onnx"]} >= {1, 4}
    assert outputs["fit"]["law"] == "nd" and outputs["fit"]["nobs"] == 9
    advice = outputs["budget"]
    assert advice["family"] == FAMILY and f"--dataset {dataset}" in advice["train_command"]
    assert f"--arch {FAMILY}" in advice["train_command"] and advice["dataset"] == dataset
    assert outputs["report"]["models"] == 10
    assert outputs["scaling"]["runs"] >= 9  # the family's grid; a diverged run may be left out
    _check_registered_onnx(f"models:/npz-shapes-{arch_name(FAMILY)}@champion", (3, 16, 16))


def _check_registered_onnx(uri: str, shape: tuple[int, int, int]) -> None:
    """The registered ONNX model takes the dataset's images and its cost card says so."""
    from mlscale.export import ort_session
    from mlscale.registry import client, load_registered_onnx, load_settings, resolve_version

    onnx_bytes, torch_model = load_registered_onnx(uri, load_settings())
    assert ort_session(onnx_bytes).get_inputs()[0].shape[1:] == list(shape)
    assert torch_model is not None and torch_model(torch.zeros(1, *shape)).shape == (1, 4)
    version = resolve_version(client(load_settings()), uri)
    assert version.tags["input_shape"] == "x".join(map(str, shape))
    assert version.tags["num_classes"] == "4"


@pytest.mark.slow
def test_entry_point_family_on_an_imagefolder_dataset_end_to_end(
        tmp_path: Path, fresh_store: str, capsys: pytest.CaptureFixture[str],
        entry_point_family: str) -> None:
    dataset = f"imagefolder:{write_imagefolder(tmp_path / 'pics', train=480, test=80)}"
    code, out, err = run_main(capsys, "train", "--arch", entry_point_family, "--dataset",
                              dataset, "--epochs", "1", "--latency-seconds", "0.01", "--json")
    assert code == 0, err
    trained = json.loads(out)
    assert (trained["registered"]["name"], trained["train_size"]) == (
        "imagefolder-pics-byonet", 480 - 48)
    outputs = _whole_pipeline(tmp_path, capsys, dataset, entry_point_family, [100, 200, 400])
    assert outputs["search"]["n_trials"] == {"COMPLETE": 9}
    assert len(outputs["models"]) == 10
    assert {row["name"] for row in outputs["models"]} == {"imagefolder-pics-byonet"}
    assert outputs["budget"]["family"] == "byonet"
    _check_registered_onnx("models:/imagefolder-pics-byonet@champion", (3, 16, 16))


def _main_fd(capfd: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``mlscale ARGS`` with file descriptors 1 and 2 captured (what C++ code prints too)."""
    from mlscale.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capfd.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


@pytest.mark.parametrize(("arch", "size", "message"), [
    ("test_user_models:returns_nothing", 16, "family test_user_models:returns_nothing returned "
                                             "NoneType, not an nn.Module, at width=1.0"),
    ("test_user_models:wrong_classes", 16, "family test_user_models:wrong_classes: output shape "
                                           "(2, 5) at width=1.0"),
    ("lenet5", 8, "LeNet needs image_size >= 12, got 8"),
    ("test_user_models:fails_in_training", 16,
     "family test_user_models:fails_in_training: a training step failed at width=1.0, "
     "depth=1: ValueError: boom in training"),
    ("test_user_models:bessel", 16,
     "family test_user_models:bessel at width=1.0, depth=1 cannot be exported to ONNX (opset "
     "17, traced at batch 1): UnsupportedOperatorError: Exporting the operator 'aten::i0'"),
    ("alexnet_mini", 8,  # the zoo too: its pooling to 3 x 3 does not export from 1 x 1
     "family alexnet_mini at depth=3 cannot be exported to ONNX (opset 17, traced at batch 1): "
     "SymbolicValueError: "),
])
def test_a_family_that_cannot_build_train_or_export_is_refused_before_its_run(
        tmp_path: Path, fresh_store: str, capfd: pytest.CaptureFixture[str],
        isolated_families: None, arch: str, size: int, message: str) -> None:
    """Each is one line on stderr, nothing on stdout (the exporter's dump of its graph
    included), before any training and before the store is opened: no run is left."""
    images = np.zeros((480, 3, size, size), np.uint8)
    path = write_npz(tmp_path / "shapes.npz", x_train=images, x_test=images[:160])
    code, out, err = _main_fd(capfd, "train", "--arch", arch, "--dataset", f"npz:{path}",
                              "--epochs", "1", "--json")
    assert (code, out) == (1, "") and err.startswith(f"Error: {message}"), err
    assert err.count("\n") == 1
    assert not Path(fresh_store.removeprefix("sqlite:///")).exists()


def test_a_family_failing_in_training_fails_its_run_naming_the_family(
        tmp_path: Path, fresh_store: str, isolated_families: None) -> None:
    """An error the model raises after training began: the run ends FAILED with the
    family's failure (not a store's), and nothing is registered."""
    from mlflow import MlflowClient

    from mlscale.registry import FAILURE_TAG, load_settings
    from mlscale.train import TrainConfig
    from mlscale.workflow import train_and_register

    dataset = f"npz:{write_npz(tmp_path / 'shapes.npz')}"
    config = TrainConfig(arch="test_user_models:fails_later", dataset=dataset, epochs=1)
    expected = ("family test_user_models:fails_later failed in training at width=1.0, "
                "depth=1: RuntimeError: diverged at step 3")
    with pytest.raises(MlscaleError) as error:
        train_and_register(config, load_settings(), latency_seconds=0.01)
    assert str(error.value) == expected
    client = MlflowClient(fresh_store, fresh_store)
    [run] = client.search_runs([client.get_experiment_by_name("mlscale-npz-shapes")
                                .experiment_id])
    assert (run.info.status, run.data.tags[FAILURE_TAG]) == ("FAILED", expected)
    assert client.search_model_versions() == []


def test_the_registry_is_listed_by_its_names_without_the_data_or_the_code(
        tmp_path: Path, fresh_store: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, isolated_families: None) -> None:
    """models --dataset/--arch filter on the registered names and tags: the folder moved
    away and the family's module gone, every form still lists the version."""
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    (code_dir / "gone_nets.py").write_text("from test_user_models import tiny_family as cnn\n")
    monkeypatch.syspath_prepend(str(code_dir))
    folder = write_imagefolder(tmp_path / "pics", train=80, test=20)
    code, _, err = run_main(capsys, "train", "--arch", "gone_nets:cnn", "--dataset",
                            f"imagefolder:{folder}", "--epochs", "1", "--latency-seconds",
                            "0.01", "--json")
    assert code == 0, err
    folder.rename(tmp_path / "moved")
    (code_dir / "gone_nets.py").unlink()
    monkeypatch.delitem(sys.modules, "gone_nets")
    monkeypatch.setattr(_registry, "_USER_MODELS", {})
    monkeypatch.chdir(tmp_path)
    for args in (["--dataset", "imagefolder-pics"], ["--dataset", f"imagefolder:{folder}"],
                 ["--arch", "gone_nets:cnn"], ["--arch", "gone_nets.cnn"]):
        code, out, err = run_main(capsys, "models", *args, "--json")
        assert code == 0, (args, err)
        assert [row["model_uri"] for row in json.loads(out)] == [
            "models:/imagefolder-pics-gone_nets.cnn/1"], args
    code, out, _ = run_main(capsys, "models", "--arch", "vgg_mini", "--json")
    assert (code, json.loads(out)) == (0, [])  # a zoo family with no version: empty
    code, _, err = run_main(capsys, "models", "--dataset", "imagefolder-pix")  # typos
    assert (code, err) == (1, "Error: no registered model has the dataset 'imagefolder-pix' "
                              "(registered: imagefolder-pics)\n")
    code, _, err = run_main(capsys, "models", "--arch", "gone_nets.cn")
    assert (code, err) == (1, "Error: no registered model has the architecture 'gone_nets.cn' "
                              "(registered: gone_nets.cnn)\n")
