"""Every published checkpoint format loads into our models: one synthetic checkpoint per format,
in that format's exact key layout, saved and read back through `models.checkpoints`."""
import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from ffcv_cram.config import UsageError
from ffcv_cram.models import get_model
from ffcv_cram.models.checkpoints import Checkpoint, CheckpointError, check_fits, load_checkpoint
from ffcv_cram.sweep.job import _check_blurpool


class BlurPoolConv2d(nn.Module):
    """ffcv-imagenet's BlurPool (its train_imagenet.py), as written there."""

    def __init__(self, conv):
        super().__init__()
        default_filter = torch.tensor([[[[1, 2, 1], [2, 4, 2], [1, 2, 1]]]]) / 16.0
        filt = default_filter.repeat(conv.in_channels, 1, 1, 1)
        self.conv = conv
        self.register_buffer("blur_filter", filt)

    def forward(self, x):
        blurred = F.conv2d(x, self.blur_filter, stride=1, padding=(1, 1),
                           groups=self.conv.in_channels, bias=None)
        return self.conv.forward(blurred)


def ffcv_imagenet_resnet50(num_classes):
    """Their model: torchvision's resnet50 with every Conv2d of stride > 1 and >= 16 input
    channels wrapped, as their `apply_blurpool` does."""
    model = torchvision.models.resnet50(num_classes=num_classes)

    def apply_blurpool(mod):
        for name, child in mod.named_children():
            if isinstance(child, nn.Conv2d) and max(child.stride) > 1 and child.in_channels >= 16:
                setattr(mod, name, BlurPoolConv2d(child))
            else:
                apply_blurpool(child)
    apply_blurpool(model)
    return model


def _outputs(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def test_ffcv_imagenet_final_weights_load_and_compute_as_theirs(tmp_path):
    torch.manual_seed(0)
    theirs = ffcv_imagenet_resnet50(10)
    for m in theirs.modules():  # BatchNorm statistics other than the defaults
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 1.5)
    state = {f"module.{k}": v for k, v in theirs.state_dict().items()}  # DDP's state_dict
    assert "module.layer2.0.conv2.conv.weight" in state and "module.layer2.0.conv2.blur_filter" in state
    assert "module.layer2.0.downsample.0.blur_filter" in state
    torch.save(state, tmp_path / "final_weights.pt")
    checkpoint = load_checkpoint(str(tmp_path / "final_weights.pt"))
    assert checkpoint.blurpool and not any(k.endswith("blur_filter") for k in checkpoint.state)
    ours = get_model("resnet50", 10, blurpool=True)
    check_fits(ours, checkpoint.state, "final_weights.pt", "resnet50")
    ours.load_state_dict(checkpoint.state)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(_outputs(ours, x), _outputs(theirs, x), rtol=1e-4, atol=1e-5)


def test_a_blur_filter_other_than_theirs_is_refused(tmp_path):
    theirs = ffcv_imagenet_resnet50(10)
    theirs.layer2[0].conv2.blur_filter.fill_(1 / 9)  # a box blur: not what our BlurPool computes
    torch.save({f"module.{k}": v for k, v in theirs.state_dict().items()}, tmp_path / "box.pt")
    with pytest.raises(CheckpointError, match=r"box.pt: layer2.0.conv2.blur_filter is not "
                                              "ffcv-imagenet's binomial blur"):
        load_checkpoint(str(tmp_path / "box.pt"))


def test_a_blurpool_checkpoint_evaluated_without_blurpool_is_refused():
    cfg = {"eval": {"checkpoint": ["final_weights.pt"]}, "model": {"blurpool": False}}
    with pytest.raises(UsageError, match="final_weights.pt: trained with BlurPool .*; evaluate it "
                                         "with --model.blurpool=1"):
        _check_blurpool(cfg, [Checkpoint({}, None, blurpool=True)])
    _check_blurpool({**cfg, "model": {"blurpool": True}}, [Checkpoint({}, None, blurpool=True)])


def test_torchvision_state_dict_loads_as_is(tmp_path):
    theirs = torchvision.models.resnet18(num_classes=10)
    torch.save(theirs.state_dict(), tmp_path / "resnet18.pth")
    checkpoint = load_checkpoint(str(tmp_path / "resnet18.pth"))
    assert not checkpoint.blurpool and checkpoint.state.keys() == theirs.state_dict().keys()
    ours = get_model("resnet18", 10)
    ours.load_state_dict(checkpoint.state)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_outputs(ours, x), _outputs(theirs, x))


def test_reference_cram_checkpoint_loads(tmp_path):
    """The CrAM reference's layout: its DataParallel model's state under 'model_state_dict'."""
    model = get_model("resnet20", 10)
    torch.save({"epoch": 200, "model_config": {"arch": "resnet20"},
                "model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "optimizer": {"state_dict": {"state": {}, "param_groups": []}},
                "lr_scheduler": {"last_epoch": 200}}, tmp_path / "cram.pt")
    checkpoint = load_checkpoint(str(tmp_path / "cram.pt"))
    assert all(torch.equal(checkpoint.state[k], v) for k, v in model.state_dict().items())
