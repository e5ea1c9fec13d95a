"""User datasets: npz:, imagefolder: and torchvision: sources, their cache and bad files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from _byo import CLASSES, shapes, write_imagefolder, write_npz
from _cli import run_main

from mlscale.data import dataset_info, default_val_size, load
from mlscale.errors import MlscaleError
from mlscale.names import dataset_name
from mlscale.pipeline import load_pipeline
from mlscale.sources import _imagefolder, load_source, source_sizes
from mlscale.train import TrainConfig, train


def _error(spec: str, root: Path | None = None) -> str:
    with pytest.raises(MlscaleError) as excinfo:
        load_source(spec, root)
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_npz_is_read_with_shape_classes_and_train_statistics(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "shapes.npz")
    splits = load(f"npz:{path}")
    info = splits.info
    assert (info.name, info.input_shape, info.num_classes, info.train_samples) == (
        "npz-shapes", (3, 16, 16), 4, 480)
    with np.load(path) as archive:
        pixels = archive["x_train"] / 255
        assert info.mean == pytest.approx(pixels.mean(), rel=1e-9)
        assert info.std == pytest.approx(pixels.std(), rel=1e-9)
        assert np.array_equal(splits.test_images.numpy(), archive["x_test"])
    assert splits.train_images.dtype.is_floating_point is False
    assert dataset_info(f"npz:{path}") == info  # the same source, read once per process


def test_npz_float_and_grey_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    grey = rng.random((100, 12, 12), dtype=np.float32)
    path = write_npz(tmp_path / "grey.npz", x_train=grey, y_train=np.arange(100) % 3,
                     x_test=grey[:20], y_test=np.arange(20) % 3)
    splits = load_source(f"npz:{path}")
    assert splits.info.input_shape == (1, 12, 12) and splits.info.num_classes == 3
    assert np.array_equal(splits.train_images.numpy(), np.rint(grey * 255).astype(np.uint8))


@pytest.mark.parametrize(("overrides", "message"), [
    ({"y_test": None}, "lacks y_test (it has: x_train, y_train, x_test)"),
    ({"y_train": np.zeros(479, dtype=np.int64)}, "x_train has 480 images but y_train has 479"),
    ({"y_test": np.full(160, 4)}, "y_test holds label 4, out of the range 0..3 of y_train"),
    ({"y_train": np.full(480, -1)}, "y_train holds the negative label -1"),
    ({"y_train": np.zeros(480, dtype=np.float32)}, "y_train must be a 1-D array of integer"),
    ({"x_test": np.zeros((160, 3, 8, 8), np.uint8)},
     "mixed image sizes: train images are 3x16x16, test images 3x8x8"),
    ({"x_train": np.full((480, 3, 16, 16), 2.0)}, "float images in x_train must lie in [0, 1]"),
    ({"x_train": np.zeros((480, 16), np.uint8)}, "x_train must be N x H x W or N x C x H x W"),
    ({"x_train": np.zeros((480, 3, 16, 8), np.uint8), "x_test": np.zeros((160, 3, 16, 8),
                                                                         np.uint8)},
     "images must be square, got 16x8"),
    ({"x_train": np.zeros((480, 3, 16, 16), np.int32)}, "must hold uint8 or float images"),
    ({"x_train": np.full((480, 3, 16, 16), np.nan)}, "float images in x_train hold 368,640 NaN "
                                                     "pixels"),
    ({"x_test": np.zeros((160, 16, 16, 3), np.uint8)},
     "x_test of shape (160, 16, 16, 3) looks channels-last (N, H, W, C); mlscale wants "
     "(N, C, H, W): x.transpose(0, 3, 1, 2)"),
])
def test_bad_npz_files_are_one_line_errors(tmp_path: Path, overrides: dict[str, object],
                                           message: str) -> None:
    path = write_npz(tmp_path / "bad.npz", **overrides)  # type: ignore[arg-type]
    assert message in _error(f"npz:{path}")


def test_labels_with_gaps_warn_naming_the_absent_classes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Classes are the largest label + 1 (documented); a class below it that the train
    split never shows is likely a mistake, so it is said, in one line on stderr."""
    labels = np.array([0, 1, 9] * 160)
    path = write_npz(tmp_path / "gaps.npz", y_train=labels, y_test=labels[:160])
    assert load_source(f"npz:{path}").info.num_classes == 10
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        f"Warning: {path}: 10 classes (the largest train label + 1), but the train split has "
        "no sample of class 2, 3, 4, 5, 6, 7, 8\n")
    load_source(f"npz:{write_npz(tmp_path / 'full.npz')}")
    assert capsys.readouterr().err == ""


def test_the_fingerprint_is_the_content_wherever_the_files_are(tmp_path: Path) -> None:
    """A moved or copied source (or the same pixels as floats) is the same data; other
    labels under the same file name are not."""
    for folder in "abc":
        (tmp_path / folder).mkdir()
    first = load_source(f"npz:{write_npz(tmp_path / 'a' / 'shapes.npz')}").info.fingerprint
    x_train, _ = shapes(480, 0)
    floats = write_npz(tmp_path / "b" / "shapes.npz", x_train=x_train / 255)
    assert load_source(f"npz:{floats}").info.fingerprint == first
    relabelled = write_npz(tmp_path / "c" / "shapes.npz", y_train=shapes(480, 0)[1][::-1])
    assert load_source(f"npz:{relabelled}").info.fingerprint not in ("", first)
    folder = write_imagefolder(tmp_path / "pics", train=8, test=4)
    copied = tmp_path / "elsewhere" / "pics"
    shutil.copytree(folder, copied)  # new mtimes: another cache key, the same content
    assert load_source(f"imagefolder:{copied}").info.fingerprint == load_source(
        f"imagefolder:{folder}").info.fingerprint
    assert dataset_info("mnist").fingerprint == ""  # a built-in is known by its name
    (tmp_path / "d").mkdir()
    grey, grey_test = shapes(480, 0)[0][:, :1], shapes(160, 1)[0][:, :1]
    as_4d = write_npz(tmp_path / "d" / "grey.npz", x_train=grey, x_test=grey_test)
    as_3d = write_npz(tmp_path / "e.npz", x_train=grey[:, 0], x_test=grey_test[:, 0])
    assert load_source(f"npz:{as_3d}").info.fingerprint == load_source(
        f"npz:{as_4d}").info.fingerprint  # (N, H, W) is (N, 1, H, W)


def test_npz_that_needs_pickle_or_is_not_an_archive(tmp_path: Path) -> None:
    pickled = tmp_path / "objects.npz"
    np.savez(pickled, x_train=np.array([{"a": 1}], dtype=object), y_train=np.zeros(1),
             x_test=np.zeros(1), y_test=np.zeros(1))
    assert "cannot read" in _error(f"npz:{pickled}") and "allow_pickle" in _error(
        f"npz:{pickled}")
    text = tmp_path / "text.npz"
    text.write_text("not an archive")
    assert _error(f"npz:{text}") == f"{text} is not a NumPy .npz archive (not a zip file)"
    assert _error(f"npz:{tmp_path / 'absent.npz'}").endswith("absent.npz does not exist")
    assert _error(f"npz:{tmp_path}") == (f"npz dataset {tmp_path} is a directory, not an .npz "
                                         "file (a folder of images is imagefolder:PATH)")
    assert _error(f"imagefolder:{text}") == (f"imagefolder dataset {text} is a file, not a "
                                             "folder (an .npz archive is npz:PATH)")


def test_imagefolder_is_decoded_once_then_read_from_its_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_imagefolder(tmp_path / "shapes")
    first = _imagefolder.load_imagefolder("imagefolder-shapes", folder, tmp_path)
    assert first.info.input_shape == (3, 16, 16) and first.info.num_classes == len(CLASSES)
    assert len(first.train_labels) == 240 and len(first.test_labels) == 80
    cached = _imagefolder.cache_path(folder, tmp_path)
    assert cached.is_file() and cached.parent == Path(os.environ["MLSCALE_CACHE_DIR"]) / "datasets"

    def no_decoding(path: str) -> None:
        raise AssertionError(f"decoded {path} again")

    with monkeypatch.context() as patch:
        patch.setattr(_imagefolder, "_decode", no_decoding)
        second = _imagefolder.load_imagefolder("imagefolder-shapes", folder, tmp_path)
    assert np.array_equal(second.train_images.numpy(), first.train_images.numpy())
    assert np.array_equal(second.test_labels.numpy(), first.test_labels.numpy())
    changed = next((folder / "train" / CLASSES[0]).iterdir())  # a changed file: decode again
    os.utime(changed, ns=(0, 0))
    assert _imagefolder.cache_path(folder, tmp_path) != cached
    monkeypatch.delenv("MLSCALE_CACHE_DIR")  # without it, the cache lives under the data root
    assert _imagefolder.cache_path(folder, tmp_path).parent == tmp_path / ".cache"


def test_imagefolder_decodes_what_was_written(tmp_path: Path) -> None:
    from PIL import Image

    folder = write_imagefolder(tmp_path / "pics", train=8, test=4)
    splits = load_source(f"imagefolder:{folder}")
    first = sorted((folder / "train" / CLASSES[0]).iterdir())[0]
    expected = np.asarray(Image.open(first)).transpose(2, 0, 1)
    assert np.array_equal(splits.train_images[0].numpy(), expected)
    assert int(splits.train_labels[0]) == 0
    assert source_sizes(f"imagefolder:{folder}") == (8, 4)
    assert dataset_name(f"imagefolder:{folder}/") == "imagefolder-pics"


def test_bad_imagefolders_are_one_line_errors(tmp_path: Path) -> None:
    folder = write_imagefolder(tmp_path / "bad", train=8, test=4)
    (folder / "train" / "empty").mkdir()
    assert "Found no valid file for the classes empty" in _error(f"imagefolder:{folder}")
    (folder / "train" / "empty").rmdir()
    corrupt = folder / "train" / CLASSES[1] / "broken.png"
    corrupt.write_bytes(b"\x89PNG not really")
    assert _error(f"imagefolder:{folder}").startswith(f"cannot decode image {corrupt}")
    corrupt.unlink()
    from PIL import Image

    big = folder / "train" / CLASSES[2] / "big.png"
    Image.new("RGB", (20, 12)).save(big)  # 20 wide, 12 high: HxW 12x20, like every shape
    assert f"{big} is 12x20, " in _error(f"imagefolder:{folder}")
    big.unlink()
    for path in (folder / "test" / CLASSES[3]).iterdir():
        path.unlink()
    (folder / "test" / CLASSES[3]).rmdir()
    assert "test/ has the classes" in _error(f"imagefolder:{folder}")
    assert "has no train/ folder" in _error(f"imagefolder:{tmp_path}")


def test_torchvision_class_reads_files_under_the_root(data_root: Path, tmp_path: Path) -> None:
    splits = load_source("torchvision:MNIST", data_root)
    assert splits.info.name == "torchvision-mnist"
    assert (splits.info.input_shape, splits.info.num_classes) == ((1, 28, 28), 10)
    assert splits.info.mean == pytest.approx(0.1307, abs=1e-4)
    assert splits.info.std == pytest.approx(0.3081, abs=1e-4)
    missing = _error("torchvision:FashionMNIST", tmp_path)
    assert "found no usable files under" in missing and "--download" in missing
    assert "has no dataset class 'Nope'" in _error("torchvision:Nope", tmp_path)


def test_npz_sizes_come_from_the_headers(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "sized.npz", train=120, test=40)
    assert source_sizes(f"npz:{path}") == (120, 40)


def test_small_train_split_gets_a_tenth_for_validation(tmp_path: Path) -> None:
    assert default_val_size(60_000) == 5000 and default_val_size(480) == 48
    path = write_npz(tmp_path / "shapes.npz")
    result = train(TrainConfig(arch="lenet5", dataset=f"npz:{path}", epochs=2, width=0.5))
    assert result.train_size == 480 - 48 and result.samples_seen == 2 * 432
    assert result.test_accuracy > 0.5  # the classes are learnable: better than chance (0.25)


def test_data_prepare_describes_a_user_source(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = write_npz(tmp_path / "shapes.npz")
    code, out, _ = run_main(capsys, "data", "prepare", "--dataset", f"npz:{path}", "--json")
    assert code == 0
    assert json.loads(out) | {"mean": 0, "std": 0} == {
        "dataset": f"npz:{path}", "name": "npz-shapes", "input_shape": [3, 16, 16],
        "num_classes": 4, "train_samples": 480, "mean": 0, "std": 0}
    broken = write_npz(tmp_path / "broken.npz", x_test=None)
    code, _, err = run_main(capsys, "data", "prepare", "--dataset", f"npz:{broken}")
    assert code == 1 and err.count("\n") == 1 and err.startswith("Error: ")
    assert "lacks x_test" in err
    code, _, err = run_main(capsys, "train", "--arch", "lenet5", "--dataset", "csv:data.csv")
    assert code == 2 and "unknown dataset source 'csv'" in err


def test_pipeline_reads_a_source_path_against_its_folder(tmp_path: Path) -> None:
    write_npz(tmp_path / "shapes.npz")
    pipeline = tmp_path / "p.yaml"
    body = ("name: p\ndataset: npz:{}\nfamilies: [lenet5]\nsearch_space: {{width: 1.0, "
            "depth: 1, train_size: 100, epochs: 1, lr: 1.0e-3}}\nbudget_flops: 1.0e12\n")
    pipeline.write_text(body.format("shapes.npz"))
    assert load_pipeline(pipeline).dataset == f"npz:{tmp_path / 'shapes.npz'}"
    pipeline.write_text(body.format("absent.npz"))
    with pytest.raises(MlscaleError, match=r"^dataset: npz dataset .*absent.npz does not exist$"):
        load_pipeline(pipeline)
