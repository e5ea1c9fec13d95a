"""Parameter and FLOP counts, checked against independent counts and known numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mlscale.measure import ModelCost, count_params, forward_flops, measure_model, train_flops
from mlscale.models import get_model, list_models


@pytest.mark.parametrize("name", list_models())
def test_measure_model_matches_an_independent_count(name: str) -> None:
    model = get_model(name).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(4, 1, 28, 28))
    cost = measure_model(model, (1, 28, 28))
    assert cost.params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert cost.flops_per_sample * 4 == counter.get_total_flops()
    assert 2 * cost.flops_per_sample < cost.train_flops_per_sample < 3 * cost.flops_per_sample


def test_lenet5_costs_match_the_classic_numbers() -> None:
    # 416,520 MACs forward; backward repeats every layer twice (input and weight
    # gradients) except conv1's input gradient (28*28*6*25 MACs = 235,200 FLOPs).
    assert measure_model(get_model("lenet5"), (1, 28, 28)) == ModelCost(
        params=61_706,
        flops_per_sample=833_040,
        train_flops_per_sample=3 * 833_040 - 235_200,
    )


def test_flops_follow_the_input_size() -> None:
    model = get_model("vgg_mini", in_channels=3, image_size=32)
    assert forward_flops(model, (3, 32, 32)) > forward_flops(get_model("vgg_mini"), (1, 28, 28))


def test_train_flops_count_a_depthwise_conv_once_per_gradient() -> None:
    # torch's own backward formula would count the weight gradient 8 times (the groups).
    model = nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.Flatten(), nn.Linear(128, 10)
    )
    conv, linear = 2 * 16 * 8 * 9, 2 * 128 * 10
    assert forward_flops(model, (8, 4, 4)) == conv + linear
    assert train_flops(model, (8, 4, 4)) == 2 * conv + 3 * linear


def test_count_params_skips_frozen_parameters() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    assert count_params(model) == 4 * 2 + 2


@pytest.mark.parametrize("training", [True, False])
def test_measuring_leaves_the_model_unchanged(training: bool) -> None:
    model = get_model("resnet_mini", width=0.5, depth=1).train(training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    measure_model(model, (1, 28, 28))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert model.training is training
