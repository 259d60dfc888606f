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

from .triton_layout import layout, pointers
from .triton_nm import nm_select
from .triton_select import BLOCK, LAUNCH, Perturbation, _pointer, select

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
            SPARSE: tl.constexpr, PLUS: tl.constexpr, BLOCK: tl.constexpr):
    c = tl.program_id(0)
    t = tl.load(chunk_tensor + c)
    offsets = tl.load(chunk_start + c) + tl.arange(0, BLOCK)
    size = tl.load(numel + t)
    valid = offsets < size
    grad_ptr = _pointer(grad_ptrs, t, tl.float32)
    g = tl.load(grad_ptr + offsets, mask=valid, other=0.0)
    if SPARSE:  # tensors without a mask (pointer 0) keep their gradient
        mask_address = tl.load(mask_ptrs + t)
        has_mask = offsets < tl.where(mask_address != 0, size, 0)
        keep = tl.load(mask_address.to(tl.pointer_type(tl.int8)) + offsets, mask=has_mask, other=1)
        g = g * keep.to(tl.float32)
    if PLUS:
        g = g + tl.load(_pointer(gsave_ptrs, t, tl.float32) + offsets, mask=valid, other=0.0)
    tl.store(grad_ptr + offsets, g, mask=valid)
    w = tl.load(_pointer(wsave_ptrs, t, tl.float32) + offsets, mask=valid, other=0.0)
    tl.store(_pointer(w_ptrs, t, tl.float32) + offsets, w, mask=valid)


def finish(params, grads, w_saves, g_saves, masks) -> None:
    """grad <- grad * mask (where masks is given and has one) + saved g (where g_saves is given);
    w <- saved w. All lists aligned with params."""
    device = params[0].device
    plan = layout(params, [-1] * len(params), BLOCK)
    if plan.num_chunks == 0:
        return
    grad_table = pointers(grads, device)
    _finish[(plan.num_chunks,)](
        grad_table, pointers(params, device), pointers(w_saves, device),
        pointers(g_saves, device) if g_saves is not None else grad_table,
        pointers(masks, device) if masks is not None else grad_table,
        plan.chunk_tensor, plan.chunk_start, plan.numel, SPARSE=masks is not None,
        PLUS=g_saves is not None, BLOCK=BLOCK, **LAUNCH)
