"""The model zoo: registry, dial validation and every family at its extreme dials."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import mlscale.models as models
from mlscale.errors import MlscaleError
from mlscale.latency import available_memory
from mlscale.models._registry import scale_channels
from mlscale.models.efficientnet import MBConv
from mlscale.models.lenet import LeNet

FAMILIES = models.list_models()


def _corners(name: str) -> list[tuple[float, int]]:
    spec = models.model_spec(name)
    corners = itertools.product(spec.width_range, spec.depth_range)
    return [*corners, (spec.default_width, spec.default_depth)]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_all_six_families_are_registered() -> None:
    assert FAMILIES == [
        "alexnet_mini",
        "efficientnet_mini",
        "inception_mini",
        "lenet5",
        "resnet_mini",
        "vgg_mini",
    ]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize(("in_channels", "image_size"), [(1, 28), (3, 32)])
def test_family_builds_at_min_default_and_max_dials(
    name: str, in_channels: int, image_size: int
) -> None:
    for width, depth in _corners(name):
        model = models.get_model(
            name,
            width=width,
            depth=depth,
            in_channels=in_channels,
            num_classes=7,
            image_size=image_size,
        ).eval()
        with torch.no_grad():
            logits = model(torch.zeros(2, in_channels, image_size, image_size))
        assert logits.shape == (2, 7), (width, depth)


@pytest.mark.parametrize("name", FAMILIES)
def test_spec_defaults_match_builder_defaults_and_give_a_small_mnist_model(name: str) -> None:
    spec = models.model_spec(name)
    assert spec.width_range[0] <= spec.default_width <= spec.width_range[1]
    assert spec.depth_range[0] <= spec.default_depth <= spec.depth_range[1]
    model = models.get_model(name)
    assert repr(model) == repr(spec.builder())
    assert 50_000 <= _params(model) <= 1_000_000
    assert "\n" not in spec.description


def test_zoo_spans_from_1k_to_5m_params() -> None:
    sizes = [
        _params(models.get_model(name, width=width, depth=depth))
        for name in FAMILIES
        for width, depth in _corners(name)
    ]
    assert min(sizes) <= 1_000
    assert max(sizes) >= 5_000_000
    assert _params(models.get_model("lenet5", width=0.1)) == 884


def test_lenet5_is_the_classic_network() -> None:
    assert _params(models.get_model("lenet5")) == 61_706


def test_lenet5_depth_adds_convs_per_stage() -> None:
    model = models.get_model("lenet5", depth=3)
    assert isinstance(model, LeNet)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 6


def test_efficientnet_depth_is_the_compound_coefficient() -> None:
    def blocks_and_stem(phi: int) -> tuple[int, int]:
        model = models.get_model("efficientnet_mini", depth=phi)
        stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        return sum(isinstance(m, MBConv) for m in model.modules()), stem.out_channels

    # repeats (1, 2, 2, 2) -> ceil(r * 1.2**2) = (2, 3, 3, 3); stem 16 * 1.1**2 = 19.4 ->
    # 24, the nearest multiple of 8 not 10% below it (torchvision's _make_divisible)
    assert blocks_and_stem(0) == (7, 16)
    assert blocks_and_stem(2) == (11, 24)


@pytest.mark.parametrize("base", [4, 6, 16, 24, 84, 96, 120, 320])
def test_channel_counts_are_round_monotone_and_exact_at_width_1(base: int) -> None:
    widths = [0.1 * 1.05**i for i in range(90)]  # 0.1 to about 8
    counts = [scale_channels(base, w) for w in widths]
    assert scale_channels(base, 1.0) == base
    assert counts == sorted(counts)
    for width, count in zip(widths, counts, strict=True):
        exact = base * width
        assert count >= 0.9 * exact or count == 1
        if exact >= 16:  # large counts are multiples of 8, or of what divides the base
            assert count % math.gcd(8, base) == 0


def test_non_round_widths_get_round_channels() -> None:
    model = models.get_model("vgg_mini", width=0.272)  # exactly 8.7 / 17.4 / 34.8
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sorted(set(convs)) == [8, 16, 32]


def test_registering_a_name_twice_is_an_error() -> None:
    with pytest.raises(ValueError, match="already registered"):
        models.register_model(models.model_spec("lenet5"))


def _one_line_error(**kwargs: object) -> str:
    with pytest.raises(MlscaleError) as excinfo:
        models.get_model(**kwargs)  # type: ignore[arg-type]
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_unknown_architecture_lists_the_choices() -> None:
    assert _one_line_error(name="gpt2") == (
        "unknown architecture 'gpt2'; choose one of: alexnet_mini, efficientnet_mini, "
        "inception_mini, lenet5, resnet_mini, vgg_mini, or name a builder as "
        "package.module:function"
    )


@pytest.mark.parametrize("width", [0, -1.0, 0.05, 9, float("nan"), "2"])
def test_width_outside_its_range_is_rejected(width: object) -> None:
    message = _one_line_error(name="lenet5", width=width)
    assert message == f"width must be in [0.1, 8] for lenet5, got {width}"


@pytest.mark.parametrize("depth", [0, 4, 2.0, True])
def test_depth_outside_its_range_or_not_an_int_is_rejected(depth: object) -> None:
    message = _one_line_error(name="lenet5", depth=depth)
    assert message == f"depth must be an integer in [1, 3] for lenet5, got {depth}"


@pytest.mark.parametrize(
    ("name", "width", "depth", "expected"),
    [
        ("resnet_mini", 2.0, 3, "resnet_mini-w2-d3"),
        ("lenet5", 0.5, 1, "lenet5-w0.5-d1"),
        ("efficientnet_mini", 0.25, 0, "efficientnet_mini-w0.25-d0"),
        ("vgg_mini", 0.950874, 2, "vgg_mini-w0.951-d2"),
    ],
)
def test_run_name_formats_the_dials(name: str, width: float, depth: int, expected: str) -> None:
    assert models.run_name(name, width, depth) == expected


def test_lenet5_rejects_images_too_small_for_its_two_pools() -> None:
    assert _one_line_error(name="lenet5", image_size=8) == "LeNet needs image_size >= 12, got 8"


@pytest.mark.skipif(available_memory() is None,
                    reason="this system does not say how much memory is available")
def test_a_model_too_large_to_train_here_is_refused_before_it_is_allocated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user family with open dial ranges takes any width; 1e11 would need 233 TiB."""
    from mlscale.measure import cost_of

    (tmp_path / "open_cnn.py").write_text(
        "from torch import nn\n"
        "def net(*, width=1.0, depth=1, in_channels=1, num_classes=10, image_size=28):\n"
        "    channels = int(8 * width)\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, channels, 3), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                         nn.Linear(channels, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cost_of("open_cnn:net", 1.0, 1, (1, 28, 28), 10).params == 170
    with pytest.raises(MlscaleError, match=r"family open_cnn:net at width=100000000000.0, "
                       r"depth=1: 16,000,000,000,010 parameters need 238418.6 GiB to train"):
        cost_of("open_cnn:net", 1e11, 1, (1, 28, 28), 10)
