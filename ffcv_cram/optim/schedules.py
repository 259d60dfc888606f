"""The reference's cosine schedule with linear warm-up, as a torch LR scheduler."""
import math

from torch.optim.lr_scheduler import LRScheduler


def cosine_factor(epoch: float, warmup_length: float, end_epoch: float) -> float:
    """lr / base_lr at (possibly fractional) 0-based `epoch`.

    Epoch e < W: (e + 1) / W (linear warm-up, capped at 1 between the last warm-up epoch and W);
    then 1/2 (1 + cos(pi (e - W) / (E - W))), held at 0 from E on.
    """
    if epoch < warmup_length:
        return min(1.0, (epoch + 1) / warmup_length)
    progress = min(epoch, end_epoch) - warmup_length
    return 0.5 * (1.0 + math.cos(math.pi * progress / (end_epoch - warmup_length)))


class CosineLR(LRScheduler):
    """CosineLR(optimizer, warmup_length, end_epoch): step() once per epoch, as the reference.

    With `steps_per_epoch`, step() once per iteration instead: the learning rate follows the same
    curve, matching the per-epoch values at every epoch start and moving smoothly in between.
    """

    def __init__(self, optimizer, warmup_length: int, end_epoch: int,
                 steps_per_epoch: int | None = None, last_epoch: int = -1):
        if warmup_length < 0:
            raise ValueError(f"warmup_length={warmup_length}: must be >= 0")
        if end_epoch <= warmup_length:
            raise ValueError(f"end_epoch={end_epoch}: must be greater than warmup_length={warmup_length}")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch={steps_per_epoch}: must be >= 1")
        self.warmup_length = warmup_length
        self.end_epoch = end_epoch
        self.steps_per_epoch = steps_per_epoch or 1
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        epoch = self.last_epoch / self.steps_per_epoch
        factor = cosine_factor(epoch, self.warmup_length, self.end_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]

    _get_closed_form_lr = get_lr
