"""BlurPool (Zhang, 2019) as used by ffcv-imagenet: a fixed 3x3 binomial blur before every strided
convolution with at least 16 input channels, zero-padded as theirs (`F.conv2d(..., padding=1)`).

Implemented as a Conv2d subclass swapped in place, so parameter names, the state_dict and the
prunable set are exactly those of the plain model: a checkpoint loads into either (ffcv-imagenet's
own key names, `<conv>.conv.weight` and `<conv>.blur_filter`, are mapped on loading by
`models.checkpoints`). The blur kernel is no state at all: it is built on the input's device, in
its dtype, in every forward.
"""
import torch
from torch import nn
from torch.nn import functional as F


def blur_filter(channels: int, device=None, dtype=None) -> torch.Tensor:
    """ffcv-imagenet's filter: outer([1, 2, 1], [1, 2, 1]) / 16 per channel, shape (C, 1, 3, 3)."""
    # the taps computed on the device: torch.tensor([1., 2., 1.], device=cuda) would be a
    # blocking host-to-device copy in every forward
    taps = 2 - (torch.arange(3, device=device, dtype=dtype) - 1).abs()
    return ((taps[:, None] * taps[None, :]) / 16).expand(channels, 1, 3, 3)


class BlurConv2d(nn.Conv2d):
    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        kernel = blur_filter(x.shape[1], x.device, x.dtype)
        return F.conv2d(x, kernel, padding=1, groups=x.shape[1])  # zeros around, as ffcv-imagenet

    def forward(self, x):
        return super().forward(self._blur(x))


def add_blurpool(model: nn.Module) -> nn.Module:
    """Turn every strided Conv2d with >= 16 input channels into a BlurConv2d (in place)."""
    for module in model.modules():
        if type(module) is nn.Conv2d and max(module.stride) > 1 and module.in_channels >= 16:
            module.__class__ = BlurConv2d
    return model
