"""steps.jsonl: one line every N training steps (with --logging.steps=N), for training curves and
to compare runs step by step, e.g. the same recipe on 1, 2 or 4 processes (N = 1).

Each line covers the steps since the previous one: N, fewer at an epoch's end and at a mid-epoch
checkpoint (both close the current line). Its fields: epoch, batch (the number in the epoch of its
last step), steps, samples (over all ranks), lr and sparsity (the draw CrAM made, null: none) of
its last step, loss (the mean over its samples on all ranks) and img_s (those samples over the
host's wall-clock time of those steps; on a GPU the host runs ahead by the queued steps, so read
it over several lines). The losses stay on the device until the loop reads its totals anyway
(mid-epoch checkpoints and the epoch's end): `flush` is a collective there, and rank 0 appends
the lines.
"""
from __future__ import annotations

import json
import os
import time

import torch

from ..atomic import write_text
from ..json_lines import read_json_lines
from ..runtime.dist import Context, all_sum

FILE = "steps.jsonl"


class StepLog:
    def __init__(self, folder: str, every: int, ctx: Context):
        """`every`: steps per line (0: no steps.jsonl)."""
        self.path, self.every, self.ctx = os.path.join(folder, FILE), int(every), ctx
        self.enabled = self.every > 0
        self._pending: list[tuple[dict, torch.Tensor, int, float]] = []  # closed lines
        self._open: dict | None = None  # the line being summed: its last step's fields and sums
        self._since = time.perf_counter()

    def keep_before(self, epoch: int, batch: int) -> None:
        """On resume: drop the lines of steps that will be run again."""
        if not (self.enabled and self.ctx.is_main and os.path.exists(self.path)):
            return
        kept = [record for record in read_json_lines(self.path, ("epoch", "batch"))
                if (record["epoch"], record["batch"]) < (epoch, batch)]
        write_text(self.path, "".join(json.dumps(record) + "\n" for record in kept))

    def start(self) -> None:
        """The clock of the first line of an epoch starts now."""
        self._since = time.perf_counter()

    def add(self, epoch: int, batch: int, loss: torch.Tensor, samples: int, lr: float,
            draw: str | None) -> None:
        if not self.enabled:
            return
        loss_sum = loss.detach().double() * samples  # a new device tensor, no wait
        line = self._open
        if line is None:
            line = self._open = {"loss_sum": loss_sum, "samples": 0, "steps": 0}
        else:
            line["loss_sum"] = line["loss_sum"] + loss_sum
        line.update(epoch=epoch, batch=batch, lr=lr, sparsity=draw, steps=line["steps"] + 1,
                    samples=line["samples"] + samples)
        if line["steps"] == self.every:
            self._close()

    def _close(self) -> None:
        line, self._open = self._open, None
        now = time.perf_counter()
        fields = {k: line[k] for k in ("epoch", "batch", "steps", "lr", "sparsity")}
        self._pending.append((fields, line["loss_sum"], line["samples"], now - self._since))
        self._since = now

    def flush(self) -> None:
        """A collective on every rank when enabled: closes the current line and sums the
        pending ones over the ranks."""
        if self._open is not None:
            self._close()
        if not (self.enabled and self._pending):
            return
        loss_sums = torch.stack([loss for _, loss, _, _ in self._pending]).tolist()
        counts = [float(n) for _, _, n, _ in self._pending]
        totals = all_sum(loss_sums + counts, self.ctx)
        loss_sums, counts = totals[:len(counts)], totals[len(counts):]
        if self.ctx.is_main:
            lines = [json.dumps({**fields, "samples": int(n), "loss": s / n,
                                 "img_s": n / seconds if seconds > 0 else None})
                     for (fields, _, _, seconds), s, n in zip(self._pending, loss_sums, counts)]
            with open(self.path, "a") as f:
                f.write("\n".join(lines) + "\n")
        self._pending = []
