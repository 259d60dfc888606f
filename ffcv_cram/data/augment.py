"""Seeded batch augmentation in torch (CIFAR style): random horizontal flip + translate.

FFCV's own random ops draw from numba's per-thread generators, which are seeded from entropy and
cannot be replayed; these draw from a torch.Generator seeded by (seed, epoch, batch), so a resumed
run sees exactly the augmentations an uninterrupted one would. Works on any device.
"""
import torch
from torch.nn import functional as F


def batch_generator(seed: int, epoch: int, batch: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + batch)


def flip_translate(x: torch.Tensor, generator: torch.Generator, padding: int = 4,
                   fill: torch.Tensor | None = None) -> torch.Tensor:
    """Flip each image with probability 1/2 and shift it by up to `padding` pixels in each
    direction, filling with `fill` per channel (None: zeros). The loaders pass a normalised black
    pixel (`normalisation.normalised_black`): the reference pads with black, then normalises.
    Layout is preserved."""
    n, c, h, w = x.shape
    flip, shift = _to_device(torch.rand(n, generator=generator) < 0.5,
                             torch.randint(0, 2 * padding + 1, (2, n), generator=generator), x.device)
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    padded = F.pad(x, (padding,) * 4)
    if fill is not None:  # the border only: the image's own values stay bit-exact
        border = torch.ones(h + 2 * padding, w + 2 * padding, dtype=torch.bool, device=x.device)
        border[padding:padding + h, padding:padding + w] = False
        padded = torch.where(border, fill.to(device=x.device, dtype=x.dtype).view(1, c, 1, 1), padded)
    rows = (torch.arange(h, device=x.device).view(1, h) + shift[0].view(n, 1)).view(n, 1, h, 1)
    cols = (torch.arange(w, device=x.device).view(1, w) + shift[1].view(n, 1)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channel = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    out = padded[batch, channel, rows, cols]
    return out.contiguous(memory_format=torch.channels_last) if x.is_contiguous(
        memory_format=torch.channels_last) else out


def _to_device(flip: torch.Tensor, shift: torch.Tensor, device: torch.device):
    """The host-drawn parameters on `device`, as one transfer. To a GPU it goes from pinned memory
    with non_blocking=True, so the caller does not wait for the device (a copy from pageable memory
    blocks until the GPU has run everything queued before it); the caching host allocator keeps the
    pinned block alive until the copy has finished."""
    if device.type != "cuda":
        return flip, shift
    packed = torch.empty((3, len(flip)), dtype=shift.dtype, pin_memory=True)
    packed[0], packed[1:] = flip, shift
    packed = packed.to(device, non_blocking=True)
    return packed[0].bool(), packed[1:]
