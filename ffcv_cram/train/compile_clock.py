"""The compile cost of a run with --training.compile: seconds of its first training step.

torch.compile builds its graphs when they first run: the forward graphs (both BatchNorm
variants for the two-pass methods) and, at the first backward, their backward graphs. All of
that happens in the first step, so its wall time is the cost a user waits for, once per process
start (a resumed run compiles again; inductor's on-disk cache makes that faster).
"""
from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from ..models.compiled import graph_count


class CompileClock:
    def __init__(self, device: torch.device, mode: str, announce: bool = True):
        self.device, self.mode, self.announce = device, mode, announce
        self.seconds: float | None = None
        self._reported = False

    def step(self, step, x, y):
        """Run `step(x, y)`; the first call is timed."""
        if self.seconds is not None:
            return step(x, y)
        start = time.perf_counter()
        out = step(x, y)
        if self.device.type == "cuda":  # once per run: the cost includes the step's kernels
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - start
        if self.announce:
            tqdm.write(self.message())  # above the progress bar, as soon as it is known
        return out

    def report(self) -> dict:
        """For an epoch's log line: graphs compiled so far (more than the previous epoch's means
        recompiles: a new resolution, or something dynamo guards on changed), and 'compile_s'
        once, in the first epoch with a step."""
        record = {"compiled_graphs": graph_count()}
        if self.seconds is not None and not self._reported:
            self._reported = True
            record["compile_s"] = round(self.seconds, 2)
        return record

    def message(self) -> str:
        n = graph_count()
        return (f"torch.compile (mode {self.mode}): the first training step took "
                f"{self.seconds:.1f} s, compiling {n} graph{'s' * (n != 1)}")
