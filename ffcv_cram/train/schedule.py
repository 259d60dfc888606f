"""Learning rate and image resolution as functions of (fractional) epoch."""
from __future__ import annotations

import math

import numpy as np

from ..choices import LR_SCHEDULES
from ..optim.schedules import cosine_factor



def lr_at(epoch: float, *, schedule: str, lr: float, epochs: int, warmup_epochs: float = 0,
          end_epoch: float | None = None, milestones=(), gamma: float = 0.1,
          peak_epoch: float = 2, per_iteration: bool = True) -> float:
    """The learning rate at `epoch` (fractional within an epoch when `per_iteration`).

    cosine: the reference CosineLR ((e+1)/W warm-up, then cosine to 0 at end_epoch, default the
            last epoch); step: lr * gamma ** (milestones passed); cyclic: ffcv-imagenet's linear
            ramp from 1e-4 * lr at 0 to lr at peak_epoch, then linearly to 0 at the end.
    """
    if not per_iteration:
        epoch = math.floor(epoch)
    if schedule == "cosine":
        return lr * cosine_factor(epoch, warmup_epochs, end_epoch or epochs)
    if schedule == "step":
        return lr * gamma ** sum(epoch >= m for m in milestones)
    if schedule == "cyclic":
        return float(np.interp(epoch, [0, peak_epoch, epochs], [1e-4 * lr, lr, 0.0]))
    raise ValueError(f"schedule={schedule!r}: must be one of {', '.join(LR_SCHEDULES)}")


def resolution_at(epoch: int, min_res: int, max_res: int, start_ramp: int, end_ramp: int) -> int:
    """ffcv-imagenet's progressive resizing: min_res until start_ramp, linear to max_res at
    end_ramp, rounded to a multiple of 32 -- but never outside [min_res, max_res] (ffcv-imagenet
    would train at 64 px with max_res=48)."""
    if min_res == max_res:
        return max_res
    res = np.interp(epoch, [start_ramp, end_ramp], [min_res, max_res])
    return int(np.clip(round(res / 32) * 32, min(min_res, max_res), max(min_res, max_res)))
