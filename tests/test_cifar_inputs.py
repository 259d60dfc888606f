"""CIFAR inputs as the CrAM reference (its std, black padding) by default; runs of ffcv-cram from
before keep theirs (CIFAR-10's true std, padding with the mean): resumed and evaluated at the scale
they were trained at, never silently another."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ffcv_cram.data.normalisation import CIFAR10_TRUE_STD, CIFAR_MEAN, CIFAR_STD, style_constants
from ffcv_cram.data.loader_options import LoaderOptions
from ffcv_cram.data.pipelines import ImageLoader
from ffcv_cram.sweep import run_settings
from ffcv_cram.train.loop import config_differences
from test_loaders import beton  # noqa: F401  (the fixture: sample i is a flat image of value i)


def test_style_constants():
    assert style_constants("cifar") == (CIFAR_MEAN, CIFAR_STD, True)
    assert style_constants("cifar", "cifar10_std") == (CIFAR_MEAN, CIFAR10_TRUE_STD, False)
    assert torch.allclose(torch.tensor(CIFAR10_TRUE_STD) / 255, torch.tensor([0.2470, 0.2435, 0.2616]))
    with pytest.raises(ValueError, match="cifar_inputs='x': must be one of reference, cifar10_std"):
        style_constants("cifar", "x")


def test_cifar10_std_inputs_are_the_earlier_ones(beton):  # noqa: F811
    """The true std, and the translate padded with zeros: the mean, once normalised."""
    loader = ImageLoader(beton, train=True, batch_size=16, seed=3,
                         options=LoaderOptions(style="cifar", num_workers=1,
                                               cifar_inputs="cifar10_std"))
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_TRUE_STD).view(1, 3, 1, 1)
    padded = 0
    for x, y in loader:
        pixels = x * std + mean
        inside = (pixels - y.view(-1, 1, 1, 1)).abs() < 1e-3
        assert (inside | (x == 0)).all()
        padded += int((~inside & (x == 0)).sum())
    assert padded > 0


def _config(**data):
    return {"model": {"arch": "resnet20", "num_classes": 10}, "resolution": {"val_res": 0},
            "training": {}, "data": data}


def test_a_run_saved_before_the_choice_is_evaluated_and_resumed_with_its_own_inputs():
    assert run_settings.settings_of(_config())["data.cifar_inputs"] == "cifar10_std"
    assert run_settings.settings_of(_config(cifar_inputs="reference"))["data.cifar_inputs"] == "reference"
    plan = {"batch_plan": {"global_batch_size": 128, "lr": 0.1}}
    current = {"data": {"cifar_inputs": "reference"}, **plan}
    assert config_differences({"data": {}, **plan}, current) == ["data.cifar_inputs"]
    assert config_differences({"data": {}, **plan}, {"data": {"cifar_inputs": "cifar10_std"}, **plan}) == []


def test_imagenet_style_refuses_cifar_inputs(tmp_path):
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "train_imagenet.py"),
                           "--data.train_dataset=x.beton", f"--logging.folder={tmp_path / 'run'}",
                           "--data.cifar_inputs=cifar10_std"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --data.cifar_inputs=cifar10_std: only for the cifar style"
