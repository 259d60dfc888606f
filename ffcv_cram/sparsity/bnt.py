"""Batch-norm tuning (BNT): re-estimate BN statistics of a pruned model from calibration batches."""
from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..progress import bar as progress_bar


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def _inputs(batch):
    return batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def tune_batchnorm(model: nn.Module, batches: Iterable, num_batches: int = 100,
                   momentum: float | None = 0.1, device: torch.device | str | None = None,
                   channels_last: bool = False, autocast_dtype: torch.dtype | None = None,
                   progress: bool = False) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them; returns batches used.

    Forwards `num_batches` batches in train mode under no_grad, cycling over `batches` when it is
    a loader or list (iterated again if shorter; a one-shot iterator is used until exhausted), and
    ends in eval mode. `momentum=None` averages cumulatively
    (every batch weighs the same); a float is the usual EMA momentum (reference: 0.1). Weights are
    never modified, so pruned weights stay exactly zero.
    """
    if num_batches < 1:
        raise ValueError(f"num_batches={num_batches}: must be >= 1")
    layers = batchnorm_layers(model)
    saved_momentum = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = momentum
    model.train()
    used = 0
    autocast = (torch.autocast(torch.device(device or "cpu").type, dtype=autocast_dtype)
                if autocast_dtype is not None else contextlib.nullcontext())
    bar = progress_bar(num_batches, "BN tuning", enabled=progress, unit="batches")
    try:
        with autocast:
            while used < num_batches:
                before = used
                for batch in itertools.islice(batches, num_batches - used):
                    x = _inputs(batch)
                    if device is not None:
                        x = x.to(device, non_blocking=True)
                    if channels_last and x.dim() == 4:
                        x = x.contiguous(memory_format=torch.channels_last)
                    model(x)
                    used += 1
                    bar.update(1)
                if used == before:
                    raise ValueError("tune_batchnorm: the calibration data yielded no batch")
                if iter(batches) is batches:  # a one-shot iterator cannot be cycled
                    break
    finally:
        bar.close()
        for m, value in zip(layers, saved_momentum):
            m.momentum = value
        model.eval()
    return used
