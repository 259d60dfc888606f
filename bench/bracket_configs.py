"""Section 2b of bench_topk_kernel.py: the bracket select's settings, side by side.

Two passes carry the time. The sample pass counts a fraction of the keys into a coarse histogram
with atomics, and sampled keys crowd into the few bins of typical magnitudes: interleaved copies of
the histogram (`SAMPLE_COPIES`) spread those atomics, a sparser sample (`SAMPLE_STRIDE`) makes
fewer of them but a wider bracket. The full pass is a chain of loads, a block scan and stores per chunk:
its warps trade registers (programs resident per multiprocessor) against keys per thread, and its
bracket counters of 1 << `L1_SHIFT` keys take one atomic per candidate. Each setting is checked
against the torch path's masks first, then its whole mask selection is timed (queued behind the
GPU, median) and profiled per kernel, with its candidates per call.
"""
from __future__ import annotations

import itertools

import torch

from ffcv_cram.kernels import triton_bracket, triton_layout
from ffcv_cram.sparsity.masks import magnitude_masks

# (sample copies, sample stride, full-pass warps, L1 shift): every combination on a GPU
GRID = dict(copies=(1, 4, 16), stride=(256, 1024), warps=(4, 8, 16), l1_shift=(10, 7))
SMOKE = [(4, 1024, 16, 10), (1, 256, 4, 7)]   # under the interpreter: two, the code paths only
_STATE_CANDIDATES = 7


def settings(cuda: bool) -> list[tuple]:
    return list(itertools.product(*GRID.values())) if cuda else SMOKE


def sweep(weights, clock, repeats, profile, sparsity=0.9) -> list[dict]:
    """One row per setting: equal masks, median seconds, device microseconds per kernel,
    candidates. Restores the module's defaults afterwards."""
    expected = magnitude_masks(weights, sparsity, kernels=False)
    out = [torch.empty_like(w, dtype=torch.bool) for w in weights]
    names = ("SAMPLE_COPIES", "SAMPLE_STRIDE", "FULL_LAUNCH", "L1_SHIFT")
    defaults = {name: getattr(triton_bracket, name) for name in names}
    rows = []
    try:
        for copies, stride, warps, l1_shift in settings(clock.cuda):
            triton_bracket.SAMPLE_COPIES, triton_bracket.SAMPLE_STRIDE = copies, stride
            triton_bracket.FULL_LAUNCH = dict(defaults["FULL_LAUNCH"], num_warps=warps)
            triton_bracket.L1_SHIFT = l1_shift
            _forget_plans()

            def call():
                magnitude_masks(weights, sparsity, out=out, kernels=True)
            call()
            row = {"sample_copies": copies, "sample_stride": stride, "full_warps": warps,
                   "l1_shift": l1_shift,
                   "equal": all(torch.equal(a, b) for a, b in zip(expected, out))}
            space = next(iter(triton_bracket._workspaces.values()))
            row["candidates"] = int(space.state[_STATE_CANDIDATES])
            row["misses"] = int(space.misses)
            if row["equal"]:
                times = clock.queued(call, repeats,
                                     label=f"bracket c{copies}/s{stride}/w{warps}/l{l1_shift}")
                row["seconds"] = sorted(times)[len(times) // 2]
                row["kernels_us"] = {name: us for name, (count, us)
                                     in profile(call, clock, 3)["kernels"].items()}
            rows.append(row)
    finally:
        for name, value in defaults.items():
            setattr(triton_bracket, name, value)
        _forget_plans()
    return rows


def _forget_plans():
    """Bracket plans and workspaces fix their settings when made: drop them with the layouts."""
    triton_layout._layouts.clear()
    triton_bracket._workspaces.clear()
