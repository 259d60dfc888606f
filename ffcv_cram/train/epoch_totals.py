"""Per-step bookkeeping of a training epoch that never makes the host wait for the device.

Loss and top-1 hits are summed on the device and read once, when the epoch ends; the sample count
is known on the host (the batch sizes). The progress bar shows the loss of a step the device has
already finished: it is copied into pinned host memory without blocking, and read once a CUDA
event says the copy is done, so the bar lags a few steps behind instead of stalling the queue.
"""
from __future__ import annotations

import torch


class LatestScalar:
    """The most recent value of a device scalar that can be read without waiting (None at first)."""

    def __init__(self, device: torch.device):
        self.value: float | None = None
        self.cuda = torch.device(device).type == "cuda"
        if self.cuda:
            self._host = torch.empty((), dtype=torch.float32, pin_memory=True)
            self._event = torch.cuda.Event()
            self._pending = False

    def post(self, tensor: torch.Tensor) -> None:
        """Offer this step's value; on a GPU it is taken when no earlier copy is still in flight."""
        if not self.cuda:
            self.value = float(tensor)  # a CPU tensor: nothing to wait for
            return
        if self._pending and not self._collect():
            return
        self._host.copy_(tensor.detach().float(), non_blocking=True)
        self._event.record()
        self._pending = True

    def read(self) -> float | None:
        if self.cuda and self._pending:
            self._collect()
        return self.value

    def _collect(self) -> bool:
        if not self._event.query():
            return False
        self.value, self._pending = float(self._host), False
        return True


class EpochTotals:
    """Sums of loss x batch size and of top-1 hits on the device; samples counted on the host."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)
        self.samples = 0
        self.loss = LatestScalar(device)

    def add(self, loss: torch.Tensor, correct: torch.Tensor, batch_size: int) -> None:
        self.sums += torch.stack([loss.double() * batch_size, correct.double()])
        self.samples += batch_size

    def result(self) -> tuple[float, float, int]:
        """(loss sum, correct, samples) of this rank: the epoch's one host synchronisation."""
        loss_sum, correct = self.sums.tolist()
        return loss_sum, correct, self.samples
