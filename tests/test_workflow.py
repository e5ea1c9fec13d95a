from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from _byo import shapes, write_npz
from click.testing import CliRunner
from mlflow import MlflowClient

from mlscale.cli import cli
from mlscale.cost_card import COST_CARD
from mlscale.data import Splits
from mlscale.errors import MlscaleError
from mlscale.export import INPUT_NAME, ort_session
from mlscale.registry import (
    CHAMPION,
    FAILURE_TAG,
    load_registered_onnx,
    load_settings,
    models_frame,
)
from mlscale.train import TrainConfig
from mlscale.workflow import train_and_register

FAST_LATENCY = {"latency_batch_sizes": (1, 8), "latency_seconds": 0.02}


def _train(train_size: int, epochs: int, seed: int = 0, **options: object):
    config = TrainConfig(arch="lenet5", train_size=train_size, epochs=epochs, seed=seed,
                         val_size=500)
    return train_and_register(config, load_settings(), **{**FAST_LATENCY, **options})


def _client(uri: str) -> MlflowClient:
    return MlflowClient(uri, uri)


def test_two_models_become_two_versions_with_full_cost_cards(fresh_store: str) -> None:
    weak = _train(300, 1)
    strong = _train(3_000, 2)
    assert weak.version is not None and strong.version is not None
    assert (weak.version.name, weak.version.version) == ("mnist-lenet5", "1")
    assert strong.version.version == "2"
    client = _client(fresh_store)
    for outcome in (weak, strong):
        assert outcome.version is not None
        version = client.get_model_version("mnist-lenet5", outcome.version.version)
        for tag in (*COST_CARD, "dataset", "arch", "width", "depth", "latency_p99_ms"):
            assert tag in version.tags, tag
        assert float(version.tags["test_accuracy"]) == pytest.approx(
            outcome.result.test_accuracy, abs=1e-6)
        assert int(version.tags["params"]) == 61_706
        assert "test accuracy" in version.description
        run = client.get_run(outcome.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params["arch"] == "lenet5"
        assert run.data.metrics["latency_p90_ms"] > 0
        assert run.data.metrics["throughput"] > 0
        history = client.get_metric_history(outcome.run_id, "val_accuracy")
        assert [m.step for m in history] == list(range(1, len(outcome.result.history) + 1))
        artifacts = {a.path for a in client.list_artifacts(outcome.run_id)}
        assert {"config.json", "latency.json", "latency.md", "torch"} <= artifacts
    assert strong.result.test_accuracy > weak.result.test_accuracy

    frame = models_frame(load_settings())
    assert list(frame["version"]) == [2, 1]  # best accuracy first
    assert frame.loc[0, "aliases"] == CHAMPION
    result = CliRunner().invoke(cli, ["models", "--json"])
    listed = json.loads(result.output)
    assert {row["model_uri"] for row in listed} == {"models:/mnist-lenet5/1",
                                                   "models:/mnist-lenet5/2"}
    assert all(row["params"] == 61_706 for row in listed)
    table = CliRunner().invoke(cli, ["models"]).output
    assert "train s" in table
    header = next(line for line in table.splitlines() if "model" in line and "alias" in line)
    assert [cell.strip() for cell in header.strip("┃ ").split("┃")][:5] == [
        "model", "alias", "width", "depth", "params"]
    assert "train size" in table and "samples/s @ batch 8" in table  # FAST_LATENCY's largest
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[1:-1]]
            for line in table.splitlines() if "models:/" in line}
    assert rows["models:/mnist-lenet5/1"][2:4] == ["1", "1"]  # width and depth
    assert "300" in rows["models:/mnist-lenet5/1"] and "3,000" in rows["models:/mnist-lenet5/2"]
    assert f"{strong.result.train_time_s:.1f}" in table  # what its training steps took
    csv = CliRunner().invoke(cli, ["models", "--csv", "--arch", "lenet5"]).output
    assert csv.splitlines()[0].startswith("name,version,model_uri")
    assert len(csv.splitlines()) == 3
    assert json.loads(CliRunner().invoke(cli, ["models", "--json", "--arch", "vgg_mini"]
                                         ).output) == []


def test_the_champion_alias_moves_only_when_beaten(fresh_store: str) -> None:
    client = _client(fresh_store)
    first = _train(300, 1)
    assert first.version is not None and first.version.champion
    better = _train(3_000, 2)
    assert better.version is not None and better.version.champion
    assert str(client.get_model_version_by_alias("mnist-lenet5", CHAMPION).version) == "2"
    worse = _train(200, 1, seed=3)
    assert worse.version is not None and not worse.version.champion
    assert worse.result.test_accuracy < better.result.test_accuracy
    assert str(client.get_model_version_by_alias("mnist-lenet5", CHAMPION).version) == "2"


def test_the_registered_onnx_loads_from_its_uri_and_matches_torch(
    fresh_store: str, mnist: Splits
) -> None:
    outcome = _train(500, 1)
    assert outcome.version is not None
    for uri in (outcome.version.model_uri, f"models:/mnist-lenet5@{CHAMPION}"):
        onnx_bytes, torch_model = load_registered_onnx(uri, load_settings())
        assert torch_model is not None
        x = mnist.test_images[:32].unsqueeze(1).float().div(255)
        x = x.sub(mnist.info.mean).div(mnist.info.std)
        logits = ort_session(onnx_bytes).run(None, {INPUT_NAME: x.numpy()})[0]
        with torch.inference_mode():
            np.testing.assert_allclose(logits, torch_model(x).numpy(), atol=1e-4)
    via_mlflow = mlflow.onnx.load_model(outcome.version.model_uri)
    assert via_mlflow.graph.input[0].name == INPUT_NAME


def test_no_register_logs_the_run_but_registers_nothing(fresh_store: str) -> None:
    outcome = _train(300, 1, register=False)
    assert outcome.version is None
    assert _client(fresh_store).get_run(outcome.run_id).info.status == "FINISHED"
    assert models_frame(load_settings()).empty


def test_a_second_store_in_the_same_process_gets_its_own_versions(fresh_store: str,
                                                                   tmp_path: Path) -> None:
    config = TrainConfig(arch="lenet5", train_size=300, epochs=1, val_size=500)
    train_and_register(config, load_settings(), latency_seconds=0.01)
    other = f"sqlite:///{tmp_path / 'other' / 'mlflow.db'}"
    outcome = train_and_register(config, load_settings(other), latency_seconds=0.01)
    assert outcome.version is not None and outcome.version.version == "1"
    for uri, count in ((fresh_store, 1), (other, 1)):
        assert len(MlflowClient(uri, uri).search_model_versions()) == count, uri


def test_a_failed_benchmark_marks_the_run_failed_and_registers_nothing(
        fresh_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlscale.latency

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise MlscaleError("ONNX Runtime ran out of memory")

    monkeypatch.setattr(mlscale.latency, "benchmark_onnx", out_of_memory)
    with pytest.raises(MlscaleError, match="ran out of memory"):
        _train(300, 1)
    client = _client(fresh_store)
    runs = client.search_runs([client.get_experiment_by_name("mlscale-mnist").experiment_id])
    assert len(runs) == 1
    assert runs[0].info.status == "FAILED"
    assert "ran out of memory" in runs[0].data.tags[FAILURE_TAG]
    assert client.search_model_versions() == []


@pytest.mark.parametrize(("config", "options", "message"), [
    ({"device": "cuda:99"}, {}, r"device 'cuda:99' \(--device\)"),
    ({"epochs": None, "max_train_flops": 1e3}, {}, "buys less than one sample"),
    ({}, {"latency_batch_sizes": (0,)}, "batch sizes must be positive"),
    ({}, {"latency_threads": 0}, r"threads \(--threads\) must be >= 1"),
    ({}, {"latency_batch_sizes": (1, 10**9)}, "batch size 1000000000 needs"),
])
def test_refused_input_opens_no_store_and_no_run(
        fresh_store: str, mnist: Splits, config: dict[str, object],
        options: dict[str, object], message: str) -> None:
    """What can be checked before training is, so it leaves no FAILED run behind (here
    not even the store's database)."""
    values: dict[str, object] = {"arch": "lenet5", "train_size": 300, "epochs": 1,
                                 "val_size": 500}
    with pytest.raises(MlscaleError, match=message):
        train_and_register(TrainConfig.from_dict(values | config), load_settings(),
                           data=mnist, **{**FAST_LATENCY, **options})
    assert not Path(fresh_store.removeprefix("sqlite:///")).exists()


def test_other_data_of_the_same_name_is_refused_before_its_run(
        tmp_path: Path, fresh_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """npz:a/shapes.npz and npz:b/shapes.npz are both named npz-shapes: the data's content
    fingerprint keeps a second dataset out of the first one's experiment and registered
    model, while the same data moved elsewhere still adds to them."""
    for folder in ("a", "moved", "b"):
        (tmp_path / folder).mkdir()
    first = write_npz(tmp_path / "a" / "shapes.npz")
    moved = shutil.copy(first, tmp_path / "moved" / "shapes.npz")
    _, labels = shapes(480, 0)
    other = write_npz(tmp_path / "b" / "shapes.npz", y_train=labels[::-1].copy())

    def train_on(path: Path | str) -> None:
        config = TrainConfig(arch="lenet5", dataset=f"npz:{path}", epochs=1, width=0.5)
        train_and_register(config, load_settings(), **FAST_LATENCY)

    train_on(first)
    train_on(moved)
    client = _client(fresh_store)
    experiment = client.get_experiment_by_name("mlscale-npz-shapes").experiment_id
    version = client.get_model_version("npz-shapes-lenet5", "2")
    assert version.tags["dataset_source"] == f"npz:{moved}"
    with pytest.raises(MlscaleError) as error:
        train_on(other)
    assert str(error.value).startswith(
        f"the experiment mlscale-npz-shapes holds runs of other data named npz-shapes: "
        f"npz:{moved} (content {version.tags['dataset_fingerprint']}), not npz:{other} "
        f"(content ")
    assert "rename the file or folder" in str(error.value)
    (tmp_path / "mlflow.yaml").write_text("experiment: 'b-{dataset}'\n")  # a new experiment,
    monkeypatch.setenv("MLSCALE_MLFLOW_CONFIG", str(tmp_path / "mlflow.yaml"))  # same model
    with pytest.raises(MlscaleError, match=r"^the registered model npz-shapes-lenet5 holds "
                                           r"runs of other data named npz-shapes: "):
        train_on(other)
    assert len(client.search_runs([experiment])) == 2
    assert client.search_runs([client.get_experiment_by_name("b-npz-shapes").experiment_id]
                              ) == []
    assert len(client.search_model_versions()) == 2


def test_mlflow_yaml_paths_resolve_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "mlflow.yaml").write_text(
        "tracking_uri: sqlite:///store/mlflow.db\nartifact_location: store/artifacts\n"
        "registered_model: 'zoo-{arch}-{dataset}'\n")
    monkeypatch.setenv("MLSCALE_MLFLOW_CONFIG", str(project / "mlflow.yaml"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings()
    assert settings.tracking_uri == f"sqlite:///{project / 'store' / 'mlflow.db'}"
    assert settings.artifact_location == (project / "store" / "artifacts").as_uri()
    assert settings.model_name("mnist", "lenet5") == "zoo-lenet5-mnist"
    assert load_settings("sqlite:///other.db").tracking_uri == f"sqlite:///{elsewhere}/other.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/env.db")
    assert load_settings().tracking_uri == "sqlite:////tmp/env.db"


def test_unknown_keys_in_mlflow_yaml_are_rejected(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mlflow.yaml").write_text("tracking_url: sqlite:///x.db\n")
    monkeypatch.setenv("MLSCALE_MLFLOW_CONFIG", str(tmp_path / "mlflow.yaml"))
    with pytest.raises(MlscaleError, match="unknown key"):
        load_settings()


@pytest.mark.parametrize(
    ("uri", "message"),
    [("not-a-uri", "malformed tracking URI"),
     ("http://127.0.0.1:9", "MLflow store http://127.0.0.1:9 failed")],
)
def test_bad_tracking_uris_are_one_line_errors(uri: str, message: str) -> None:
    with pytest.raises(MlscaleError, match=message) as error:
        models_frame(load_settings(uri))
    assert "\n" not in str(error.value)


def test_a_model_uri_that_does_not_exist_is_an_error(fresh_store: str) -> None:
    with pytest.raises(MlscaleError, match="failed"):
        load_registered_onnx("models:/mnist-nothing/7", load_settings())
    with pytest.raises(MlscaleError, match="malformed model URI"):
        load_registered_onnx("models:/just-a-name", load_settings())


def test_a_projects_own_mlflow_yaml_holds_both_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a project folder with its own mlflow.yaml, the MLflow store and the search's
    Optuna store both resolve there (not into mlscale's checkout); from a subfolder of it,
    MLSCALE_MLFLOW_CONFIG keeps them together too."""
    from mlscale.search import default_storage

    monkeypatch.delenv("MLSCALE_MLFLOW_CONFIG", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "mlflow.yaml").write_text("tracking_uri: sqlite:///runs/mlflow.db\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings().tracking_uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert default_storage() == f"sqlite:///{tmp_path / 'registry' / 'optuna.db'}"
    nested = tmp_path / "notebooks"
    nested.mkdir()
    monkeypatch.chdir(nested)
    monkeypatch.setenv("MLSCALE_MLFLOW_CONFIG", str(tmp_path / "mlflow.yaml"))
    assert default_storage() == f"sqlite:///{tmp_path / 'registry' / 'optuna.db'}"
    assert load_settings().tracking_uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
