from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mlscale.data import Splits
from mlscale.errors import MlscaleError
from mlscale.train import TrainConfig, train


def _config(**overrides: object) -> TrainConfig:
    values: dict[str, object] = {"arch": "lenet5", "train_size": 1_000, "epochs": 1,
                                 "val_size": 500}
    values.update(overrides)
    return TrainConfig.from_dict(values)


def test_lenet_learns_and_reports_every_figure(mnist: Splits) -> None:
    result = train(_config(train_size=2_000, epochs=2, batch_size=64), data=mnist)
    assert result.test_accuracy > 0.85
    assert result.error_rate == pytest.approx(1 - result.test_accuracy)
    assert 0 < result.test_loss < 0.6
    assert result.samples_seen == 4_000
    assert result.train_flops == 4_000 * result.train_flops_per_sample
    assert [h.samples_seen for h in result.history] == [2_000, 4_000]
    assert result.history[-1].val_accuracy > result.history[0].val_accuracy - 0.05
    assert (result.params, result.flops_per_sample) == (61_706, 833_040)
    assert result.run_name == "lenet5-w1-d1"
    assert 0 < result.train_time_s < result.wall_time_s
    payload = result.to_dict()
    assert payload["config"]["arch"] == "lenet5" and "model" not in payload


@pytest.mark.parametrize("budget", [3e8, 1.234e9, 5e9])
def test_a_flops_budget_is_kept_within_one_batch(mnist: Splits, budget: float) -> None:
    result = train(_config(epochs=None, max_train_flops=budget, batch_size=64), data=mnist)
    per_sample = result.train_flops_per_sample
    assert result.train_flops <= budget
    assert budget - result.train_flops < 64 * per_sample
    assert result.samples_seen == int(budget // per_sample)


def test_a_budget_spanning_epochs_evaluates_each_pass(mnist: Splits) -> None:
    per_sample = 2_263_920  # lenet5's measured training FLOPs per sample
    result = train(_config(epochs=None, max_train_flops=2_500 * per_sample), data=mnist)
    assert [h.samples_seen for h in result.history] == [1_000, 2_000, 2_500]
    assert result.history[-1].epoch == pytest.approx(2.5)


def test_training_is_deterministic_for_a_seed_on_cpu(mnist: Splits) -> None:
    first = train(_config(seed=11), data=mnist)
    second = train(_config(seed=11), data=mnist)
    other = train(_config(seed=12), data=mnist)
    assert first.test_loss == second.test_loss
    def figures(result: object) -> list[tuple[float, int, float, float]]:
        return [(h.epoch, h.samples_seen, h.val_loss, h.val_accuracy)
                for h in result.history]  # type: ignore[attr-defined]

    assert figures(first) == figures(second)
    assert first.test_loss != other.test_loss
    for a, b in zip(first.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("arch", ["alexnet_mini", "vgg_mini", "inception_mini", "resnet_mini",
                                  "efficientnet_mini"])
def test_every_family_trains_at_its_smallest_width(mnist: Splits, arch: str) -> None:
    from mlscale.models import model_spec

    width = model_spec(arch).width_range[0]
    result = train(_config(arch=arch, width=width, train_size=500), data=mnist)
    assert result.samples_seen == 500
    assert 0 < result.test_loss < 10


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train_size": 0}, r"train size must be in \[1, 59500\]"),
        ({"train_size": 59_501}, r"train size must be in \[1, 59500\]"),
        ({"arch": "transformer"}, "unknown architecture 'transformer'"),
        ({"width": 0.0}, "width must be in"),
        ({"epochs": 0}, r"epochs \(--epochs\) must be >= 1"),
        ({"max_train_flops": 1e9},
         r"either epochs \(--epochs\) or max_train_flops \(--max-train-flops\), not both"),
        ({"epochs": None, "max_train_flops": 10.0},
         r"max_train_flops \(--max-train-flops\) 10 buys less than one sample: this model "
         r"takes 2,263,920 training FLOPs per sample"),
        ({"device": "cuda:99"}, r"device 'cuda:99' \(--device\)"),
        ({"device": "cuda:one"}, r"device \(--device\) must be cpu, cuda or cuda:N"),
        ({"batch_size": 0}, r"batch size \(--batch-size\) must be >= 1"),
        ({"lr": 0.0}, r"learning rate \(--lr\) must be positive"),
        ({"weight_decay": -1e-4}, "weight decay must be >= 0"),
        ({"dataset": "imagenet"}, "unknown dataset 'imagenet'"),
    ],
)
def test_bad_settings_are_one_line_errors(mnist: Splits, overrides: dict[str, object],
                                          message: str) -> None:
    with pytest.raises(MlscaleError, match=message) as error:
        train(_config(**overrides), data=None if "dataset" in overrides else mnist)
    assert "\n" not in str(error.value)


def test_the_family_training_defaults_apply_unless_the_run_sets_its_own(mnist: Splits) -> None:
    from mlscale.models import model_spec

    spec = model_spec("lenet5")
    assert spec.lr == 1e-2 and model_spec("vgg_mini").lr == 3e-3
    default = train(_config(train_size=300), data=mnist)
    assert (default.config.lr, default.config.weight_decay) == (spec.lr, spec.weight_decay)
    same = train(_config(train_size=300, lr=spec.lr), data=mnist)
    other = train(_config(train_size=300, lr=3e-3), data=mnist)
    assert default.test_loss == same.test_loss  # trained with it, not only recorded
    assert other.test_loss != default.test_loss and other.config.lr == 3e-3


@pytest.mark.parametrize(("overrides", "message"), [
    ({"epochs": None, "max_train_flops": 2e6}, "buys less than one sample"),
    ({"epochs": None, "max_train_flops": 1e3, "arch": "vgg_mini", "width": 2.0},
     "buys less than one sample"),
    ({"device": "cuda:99"}, "cuda:99"),
])
def test_validate_refuses_what_training_would_refuse_without_any_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: dict[str, object],
        message: str) -> None:
    """The budget and the device are checked from shapes and this machine alone: nothing is
    prepared or read (the data root stays empty)."""
    monkeypatch.setenv("MLSCALE_DATA_ROOT", str(tmp_path))
    with pytest.raises(MlscaleError, match=message):
        _config(**overrides).validate()
    assert list(tmp_path.iterdir()) == []


def test_validate_passes_a_budget_of_exactly_one_sample(mnist: Splits) -> None:
    one = _config(epochs=None, max_train_flops=2_263_920.0)
    one.validate()
    assert train(one, data=mnist).samples_seen == 1


def test_unknown_config_keys_are_rejected() -> None:
    with pytest.raises(MlscaleError, match="unknown training option"):
        TrainConfig.from_dict({"arch": "lenet5", "epoch": 3})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_runs_on_cuda(mnist: Splits) -> None:
    result = train(_config(device="cuda"), data=mnist)
    assert result.test_accuracy > 0.5


def test_evaluations_are_spread_evenly_over_the_run(mnist: Splits) -> None:
    result = train(_config(train_size=1_000, epochs=None, max_train_flops=2_600 * 2_263_920,
                           batch_size=100, evaluations=4), data=mnist)
    # quarters of 2,600 samples, each at the first batch end past the point
    assert [h.samples_seen for h in result.history] == [700, 1_300, 2_000, 2_600]
    assert result.samples_seen == 2_600
