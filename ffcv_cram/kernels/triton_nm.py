"""Triton kernel of `masks.nm_masks` for float32 tensors: one launch for all groupable tensors.

A group is M consecutive elements of the weight in (out, kh, kw, in) order (input channels last,
see `masks.nm_groups`): the row-major order of a permuted view. Inside a group the M - N smallest
magnitudes are pruned, the lower position first among equal ones. Each program ranks a block of
groups in registers; with `zero` the pruned weights become +-0 in the same pass.
"""
from __future__ import annotations

import triton
import triton.language as tl

from . import triton_chunk as ck
from .triton_layout import layout, pointers
from .triton_select import LAUNCH

GROUPS_PER_PROGRAM = 256


@triton.jit(do_not_specialize=["N"])  # one compiled variant for every N of the same M
def _nm_select(w_ptrs, mask_ptrs, chunk_tensor, chunk_start, numel, sizes, strides, N,
               M: tl.constexpr, M_POW2: tl.constexpr, ZERO: tl.constexpr, GROUPS: tl.constexpr):
    c = tl.program_id(0)
    t = tl.load(chunk_tensor + c)
    group = tl.load(chunk_start + c) + tl.arange(0, GROUPS)[:, None]
    position = tl.arange(0, M_POW2)[None, :]
    valid = (group < tl.load(numel + t) // M) & (position < M)
    offsets = ck.logical_offsets(group * M + position, sizes, strides, t)
    w_ptr = ck.pointer(w_ptrs, t, tl.float32)
    w = tl.load(w_ptr + offsets, mask=valid, other=0.0)
    key = w.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    rank = tl.zeros([GROUPS, M_POW2], tl.int32)
    for j in tl.static_range(M):  # rank = smaller keys + equal keys at lower positions
        other = tl.sum(tl.where(position == j, key, 0), axis=1)[:, None]
        rank += ((other < key) | ((other == key) & (position > j))).to(tl.int32)
    keep = rank >= M - N
    tl.store(ck.pointer(mask_ptrs, t, tl.int8) + offsets, keep.to(tl.int8), mask=valid)
    if ZERO:
        tl.store(w_ptr + offsets, w * keep.to(tl.float32), mask=valid)


def _grouping_view(t):
    """A view whose row-major order is the grouping order: (out, kh, kw, in), padded to 4 dims
    with size-1 kernel dims (a Linear weight's (out, in) order is unchanged by them)."""
    while t.dim() < 4:
        t = t.unsqueeze(-1)
    return t.permute(0, 2, 3, 1)


def nm_select(tensors, masks, n: int, m: int, zero: bool) -> None:
    """Write the N:M keep-masks of groupable dense float32 tensors (<= 4 dims) into `masks`."""
    device = tensors[0].device
    tensors = [_grouping_view(t) for t in tensors]
    masks = [_grouping_view(mask) for mask in masks]
    plan = layout(tensors, [0] * len(tensors), GROUPS_PER_PROGRAM, unit=m)
    if plan.num_chunks == 0:
        return
    _nm_select[(plan.num_chunks,)](
        pointers(tensors, device).table, pointers(masks, device).table, plan.chunk_tensor,
        plan.chunk_start, plan.numel, plan.sizes, plan.strides, n, M=m,
        M_POW2=triton.next_power_of_2(m), ZERO=zero, GROUPS=GROUPS_PER_PROGRAM, **LAUNCH)
