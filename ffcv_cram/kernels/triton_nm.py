"""Triton kernel of `masks.nm_masks` for float32 tensors: one launch for all groupable tensors.

A group is M consecutive elements of the weight in (out, kh, kw, in) order (input channels last,
see `masks.nm_groups`); inside a group the M - N smallest magnitudes are pruned, the lower position
first among equal ones. Each program ranks a block of groups in registers; with `zero` the pruned
weights become +-0 in the same pass.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_layout import layout, pointers
from .triton_select import LAUNCH, _pointer

GROUPS_PER_PROGRAM = 256


@triton.jit
def _nm_offsets(q, sizes, strides, t):
    """Memory offsets of index q in (out, kh, kw, in) order; sizes/strides are (out, in, kh, kw)."""
    s1 = tl.load(sizes + t * 4 + 1)
    s2 = tl.load(sizes + t * 4 + 2)
    s3 = tl.load(sizes + t * 4 + 3)
    i1 = q % s1
    rest = q // s1
    i3 = rest % s3
    rest = rest // s3
    i2 = rest % s2
    i0 = rest // s2
    return (i0 * tl.load(strides + t * 4) + i1 * tl.load(strides + t * 4 + 1)
            + i2 * tl.load(strides + t * 4 + 2) + i3 * tl.load(strides + t * 4 + 3))


@triton.jit
def _nm_select(w_ptrs, mask_ptrs, chunk_tensor, chunk_start, numel, sizes, strides, N,
               M: tl.constexpr, M_POW2: tl.constexpr, ZERO: tl.constexpr, GROUPS: tl.constexpr):
    c = tl.program_id(0)
    t = tl.load(chunk_tensor + c)
    group = tl.load(chunk_start + c) + tl.arange(0, GROUPS)[:, None]
    position = tl.arange(0, M_POW2)[None, :]
    valid = (group < tl.load(numel + t) // M) & (position < M)
    offsets = _nm_offsets(group * M + position, sizes, strides, t)
    w_ptr = _pointer(w_ptrs, t, tl.float32)
    w = tl.load(w_ptr + offsets, mask=valid, other=0.0)
    key = w.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    rank = tl.zeros([GROUPS, M_POW2], tl.int32)
    for j in tl.static_range(M):  # rank = smaller keys + equal keys at lower positions
        other = tl.sum(tl.where(position == j, key, 0), axis=1)[:, None]
        rank += ((other < key) | ((other == key) & (position > j))).to(tl.int32)
    keep = rank >= M - N
    tl.store(_pointer(mask_ptrs, t, tl.int8) + offsets, keep.to(tl.int8), mask=valid)
    if ZERO:
        tl.store(w_ptr + offsets, w * keep.to(tl.float32), mask=valid)


def _as_4d(t):
    """(out, in, ...) with trailing size-1 dims: the grouping order does not change."""
    while t.dim() < 4:
        t = t.unsqueeze(-1)
    return t


def nm_select(tensors, masks, n: int, m: int, zero: bool) -> None:
    """Write the N:M keep-masks of groupable dense float32 tensors (<= 4 dims) into `masks`."""
    device = tensors[0].device
    tensors = [_as_4d(t) for t in tensors]
    plan = layout(tensors, [0] * len(tensors), GROUPS_PER_PROGRAM, unit=m)
    if plan.num_chunks == 0:
        return
    _nm_select[(plan.num_chunks,)](
        pointers(tensors, device), pointers(masks, device), plan.chunk_tensor, plan.chunk_start,
        plan.numel, plan.sizes, plan.strides, n, M=m, M_POW2=triton.next_power_of_2(m), ZERO=zero,
        GROUPS=GROUPS_PER_PROGRAM, **LAUNCH)
