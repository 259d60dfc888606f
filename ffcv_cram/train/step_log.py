"""steps.jsonl: one line per training step (with --logging.steps=1), to compare runs step by step,
e.g. the same recipe on 1, 2 or 4 processes.

Each line: epoch, batch (its number in the epoch), samples (over all ranks), lr, the sparsity CrAM
drew (null: none) and the loss (the mean over all ranks' samples). The losses stay on the device
until the loop reads its totals anyway (mid-epoch checkpoints and the epoch's end): `flush` is a
collective there, and rank 0 appends the lines.
"""
from __future__ import annotations

import json
import os

import torch

from ..atomic import write_text
from ..runtime.dist import Context, all_sum

FILE = "steps.jsonl"


class StepLog:
    def __init__(self, folder: str, enabled: bool, ctx: Context):
        self.path, self.enabled, self.ctx = os.path.join(folder, FILE), enabled, ctx
        self._pending: list[tuple[dict, torch.Tensor, int]] = []

    def keep_before(self, epoch: int, batch: int) -> None:
        """On resume: drop the lines of steps that will be run again."""
        if not (self.enabled and self.ctx.is_main and os.path.exists(self.path)):
            return
        with open(self.path) as f:
            lines = [line for line in f if line.strip()
                     and (json.loads(line)["epoch"], json.loads(line)["batch"]) < (epoch, batch)]
        write_text(self.path, "".join(lines))

    def add(self, epoch: int, batch: int, loss: torch.Tensor, samples: int, lr: float,
            draw: str | None) -> None:
        if self.enabled:  # loss x samples: a new device tensor, no wait
            self._pending.append(({"epoch": epoch, "batch": batch, "lr": lr, "sparsity": draw},
                                  loss.detach().double() * samples, samples))

    def flush(self) -> None:
        """A collective on every rank when enabled: sums the pending steps over the ranks."""
        if not (self.enabled and self._pending):
            return
        loss_sums = torch.stack([loss for _, loss, _ in self._pending]).tolist()
        counts = [float(n) for _, _, n in self._pending]
        totals = all_sum(loss_sums + counts, self.ctx)
        loss_sums, counts = totals[:len(counts)], totals[len(counts):]
        if self.ctx.is_main:
            lines = [json.dumps({**line, "samples": int(n), "loss": s / n})
                     for (line, _, _), s, n in zip(self._pending, loss_sums, counts)]
            with open(self.path, "a") as f:
                f.write("\n".join(lines) + "\n")
        self._pending = []
