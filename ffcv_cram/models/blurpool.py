"""BlurPool (Zhang, 2019) as used by ffcv-imagenet: a fixed 3x3 binomial blur before every strided
convolution with at least 16 input channels.

Implemented as a Conv2d subclass swapped in place, so parameter names, the state_dict and the
prunable set are exactly those of the plain model: a checkpoint loads into either. The blur
kernel is no state at all: it is built on the input's device, in its dtype, in every forward.
"""
import torch
from torch import nn
from torch.nn import functional as F


class BlurConv2d(nn.Conv2d):
    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        # the taps [1, 2, 1] computed on the device: torch.tensor([1., 2., 1.], device=cuda)
        # would be a blocking host-to-device copy in every forward
        taps = 2 - (torch.arange(3, device=x.device, dtype=x.dtype) - 1).abs()
        kernel = (taps[:, None] * taps[None, :]) / 16
        kernel = kernel.expand(x.shape[1], 1, 3, 3)
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernel, groups=x.shape[1])

    def forward(self, x):
        return super().forward(self._blur(x))


def add_blurpool(model: nn.Module) -> nn.Module:
    """Turn every strided Conv2d with >= 16 input channels into a BlurConv2d (in place)."""
    for module in model.modules():
        if type(module) is nn.Conv2d and max(module.stride) > 1 and module.in_channels >= 16:
            module.__class__ = BlurConv2d
    return model
