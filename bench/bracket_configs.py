"""Section 2b of bench_topk_kernel.py: the bracket select's launch configurations, side by side.

The full pass (`triton_bracket._full`) is a chain of loads, a block scan and stores per chunk:
how many warps a program has trades registers (resident programs per multiprocessor) against
elements per thread. Each configuration is checked against the torch path's masks first, then
its whole mask selection is timed (queued behind the GPU, median) and profiled per kernel.
"""
from __future__ import annotations

import torch

from ffcv_cram.kernels import triton_bracket
from ffcv_cram.sparsity.masks import magnitude_masks

FULL_WARPS = (8, 16, 32)
SAMPLE_CHUNKS = (16, 64)


def sweep(weights, clock, repeats, profile, sparsity=0.9) -> list[dict]:
    """One row per (full-pass warps, sample chunks per program): equal masks, median seconds,
    device microseconds per kernel. Restores the module's defaults afterwards."""
    expected = magnitude_masks(weights, sparsity, kernels=False)
    out = [torch.empty_like(w, dtype=torch.bool) for w in weights]
    defaults = dict(triton_bracket.FULL_LAUNCH), triton_bracket.SAMPLE_CHUNKS
    rows = []
    try:
        for warps in FULL_WARPS:
            for chunks in SAMPLE_CHUNKS:
                triton_bracket.FULL_LAUNCH = dict(defaults[0], num_warps=warps)
                triton_bracket.SAMPLE_CHUNKS = chunks
                _forget_plans()

                def call():
                    magnitude_masks(weights, sparsity, out=out, kernels=True)
                call()
                row = {"full_warps": warps, "sample_chunks": chunks,
                       "equal": all(torch.equal(a, b) for a, b in zip(expected, out))}
                if row["equal"]:
                    times = clock.queued(call, repeats, label=f"bracket {warps}w/{chunks}c")
                    row["seconds"] = sorted(times)[len(times) // 2]
                    row["kernels_us"] = {name: us for name, (count, us)
                                         in profile(call, clock, 3)["kernels"].items()}
                rows.append(row)
    finally:
        triton_bracket.FULL_LAUNCH, triton_bracket.SAMPLE_CHUNKS = defaults
        _forget_plans()
    return rows


def _forget_plans():
    """Bracket plans fix their sample grid when built: drop them with the cached layouts."""
    from ffcv_cram.kernels import triton_layout
    triton_layout._layouts.clear()
