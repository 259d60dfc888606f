"""OptimizerOptions: the trainer's optimizer settings, checked once, passed down whole."""
import dataclasses

import pytest
import torch

from ffcv_cram.optim import NMTopkCrAM, TopkCrAM
from ffcv_cram.train.optimizer_options import OptimizerOptions
from ffcv_cram.train.step import make_optimizer
from nets import SmallConvNet

SGD = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)


@pytest.mark.parametrize("method, option, message", [
    ("sgd", dict(interval=2), "apply to cram and cram_nm, not sgd"),
    ("sam", dict(second_pass_fraction=0.5), "apply to cram and cram_nm, not sam"),
    ("sam", dict(cuda_graph=True), "cuda_graph=True does not take method=sam"),
    ("cram", dict(cuda_graph=True, interval=2, reuse=True), "cuda_graph=True does not take reuse"),
    ("cram_nm", dict(cuda_graph=True, grad_norm=True), "cuda_graph=True does not take grad_norm"),
    ("adam", {}, "method='adam': must be one of sgd, sam, cram, cram_nm"),
])
def test_a_setting_the_method_does_not_take_is_refused_where_the_options_are_made(
        method, option, message):
    with pytest.raises(ValueError, match=message):
        OptimizerOptions(method=method, **SGD, **option)


def test_options_are_frozen_and_hold_tuples():
    options = OptimizerOptions(method="cram", **SGD, sparsities=[0.5, 0.9], patterns=["2:4"])
    assert options.sparsities == (0.5, 0.9) and options.patterns == ("2:4",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.rho = 0.1


def test_from_config_reads_the_trainer_sections():
    cfg = {"batch_plan": {"lr": 0.2},
           "training": {"optimizer": "cram_nm", "momentum": 0.8, "weight_decay": 1e-4,
                        "nesterov": True, "cuda_graph": False},
           "cram": {"rho": 0.1, "sparsities": [0.5], "patterns": ["1:4"], "plus_version": False,
                    "sparse_grad": True, "scope": "global", "grad_norm": True, "seed": 7,
                    "interval": 2, "reuse": True, "second_pass_fraction": 0.5}}
    options = OptimizerOptions.from_config(cfg, start_step=3, ramp_steps=5)
    assert options == OptimizerOptions(
        method="cram_nm", lr=0.2, momentum=0.8, weight_decay=1e-4, nesterov=True, rho=0.1,
        sparsities=(0.5,), patterns=("1:4",), plus_version=False, grad_norm=True, seed=7,
        interval=2, reuse=True, second_pass_fraction=0.5, start_step=3, ramp_steps=5)
    optimizer = make_optimizer(SmallConvNet().parameters(), options)
    assert isinstance(optimizer, NMTopkCrAM) and optimizer.patterns == ((1, 4),)
    assert (optimizer.interval, optimizer.reuse, optimizer.start_step) == (2, True, 3)
    assert optimizer.param_groups[0]["nesterov"] and optimizer.param_groups[0]["lr"] == 0.2


def test_make_optimizer_passes_every_option_down():
    model = SmallConvNet()
    options = OptimizerOptions(method="cram", **SGD, rho=0.2, sparsities=(0.7,), scope="uniform",
                               seed=3, interval=3, second_pass_fraction=0.25)
    optimizer = make_optimizer(model.parameters(), options, dense=[model.conv1.weight])
    assert isinstance(optimizer, TopkCrAM)
    assert not optimizer._compresses(model.conv1.weight) and optimizer._compresses(model.fc.weight)
    assert (optimizer.sparsities, optimizer.scope, optimizer.interval) == ((0.7,), "uniform", 3)
    assert optimizer.second_pass_fraction == 0.25 and optimizer.param_groups[0]["rho"] == 0.2
    assert isinstance(make_optimizer(model.parameters(), OptimizerOptions(method="sgd", **SGD)),
                      torch.optim.SGD)
