"""The CrAM step's element-wise passes, fused (float32 parameters, one launch per pass).

    first half   save w (and g), w += rho * g, histogram |w|   -> triton_select (first pass)
                 top-k threshold, w *= mask, write mask        -> triton_select / triton_nm
    second half  g = g * mask + g_saved, w = w_saved           -> `finish` (this module)

Arithmetic matches the torch path bit for bit: rho * g is rounded before it is added (no FMA),
masking multiplies by exactly 0 or 1.
"""
from __future__ import annotations

import triton
import triton.language as tl

from . import triton_chunk as ck
from .triton_layout import aligned, layout, pointers
from .triton_nm import nm_select
from .triton_select import BLOCK, LAUNCH, Perturbation, select

__all__ = ["Perturbation", "perturb", "perturb_and_select", "nm_compress", "finish"]


def perturb_and_select(params, perturbation, groups, counts, masks) -> None:
    """Perturb every parameter; prune the selected ones to `counts` per group, writing masks."""
    select(params, groups, counts, masks, zero=True, perturb=perturbation)


def perturb(params, perturbation) -> None:
    """Perturb every parameter (save w and g, w += rho * g) in one pass."""
    select(params, [-1] * len(params), [], [None] * len(params), zero=False,
           perturb=perturbation)


def nm_compress(params, masks, n: int, m: int) -> None:
    nm_select(params, masks, n, m, zero=True)


@triton.jit
def _finish(grad_ptrs, w_ptrs, wsave_ptrs, gsave_ptrs, mask_ptrs, chunk_tensor, chunk_start, numel,
            SPARSE: tl.constexpr, PLUS: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    t, start, size = ck.chunk(chunk_tensor, chunk_start, numel, BLOCK)
    if size == BLOCK:
        _finish_chunk(grad_ptrs, w_ptrs, wsave_ptrs, gsave_ptrs, mask_ptrs, t, start, size,
                      SPARSE, PLUS, ALIGNED, True, BLOCK)
    else:
        _finish_chunk(grad_ptrs, w_ptrs, wsave_ptrs, gsave_ptrs, mask_ptrs, t, start, size,
                      SPARSE, PLUS, ALIGNED, False, BLOCK)


@triton.jit
def _finish_chunk(grad_ptrs, w_ptrs, wsave_ptrs, gsave_ptrs, mask_ptrs, t, start, size,
                  SPARSE: tl.constexpr, PLUS: tl.constexpr, ALIGNED: tl.constexpr,
                  FULL: tl.constexpr, BLOCK: tl.constexpr):
    grad_at = ck.base(grad_ptrs, t, start, tl.float32, ALIGNED)
    g = ck.load(grad_at, size, FULL, BLOCK)
    if SPARSE:
        if tl.load(mask_ptrs + t) != 0:  # tensors without a mask keep their gradient
            keep = ck.load(ck.base(mask_ptrs, t, start, tl.int8, ALIGNED), size, FULL, BLOCK)
            g = g * keep.to(tl.float32)
    if PLUS:
        g = g + ck.load(ck.base(gsave_ptrs, t, start, tl.float32, ALIGNED), size, FULL, BLOCK)
    ck.store(grad_at, g, size, FULL, BLOCK)
    w = ck.load(ck.base(wsave_ptrs, t, start, tl.float32, ALIGNED), size, FULL, BLOCK)
    ck.store(ck.base(w_ptrs, t, start, tl.float32, ALIGNED), w, size, FULL, BLOCK)


def finish(params, grads, w_saves, g_saves, masks) -> None:
    """grad <- grad * mask (where masks is given and has one) + saved g (where g_saves is given);
    w <- saved w. All lists aligned with params."""
    device = params[0].device
    plan = layout(params, [-1] * len(params), BLOCK)
    if plan.num_chunks == 0:
        return
    grad_table, w_table = pointers(grads, device), pointers(params, device)
    wsave_table = pointers(w_saves, device)
    gsave_table = pointers(g_saves, device) if g_saves is not None else grad_table
    mask_table = pointers(masks, device) if masks is not None else grad_table
    tables = (grad_table, w_table, wsave_table, gsave_table, mask_table)
    _finish[(plan.num_chunks,)](
        *(table.table for table in tables), plan.chunk_tensor, plan.chunk_start, plan.numel,
        SPARSE=masks is not None, PLUS=g_saves is not None, ALIGNED=aligned(*tables),
        BLOCK=BLOCK, **LAUNCH)
