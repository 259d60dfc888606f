"""Triton kernels of `masks.py`'s exact radix select, for float32 tensors, sync-free.

The same algorithm and tie rule as the torch path, bit for bit: the k-th smallest 31-bit magnitude
key (the bit pattern of |w|) is found digit by digit. Each pass is one launch over all tensors that
histograms the next digit among the keys sharing the prefix found so far (per-program histograms,
added into a global one); a one-program-per-group launch then picks the digit holding the k-th
smallest key, on the device (no host synchronisation anywhere). Selection groups run side by side in
the same launches: one group for a global threshold, one per tensor for uniform sparsity.

Reading the weights is the cost, so with few groups (a global threshold) two passes suffice: the
first histograms the top 12 bits; the second, besides the next 10 bits, counts the keys sharing
that prefix (a small fraction) by all of their remaining 19 bits with global atomics, and the pick
reads the 512 fine bins under its chosen 10-bit digit. With many groups (uniform), whose fine
histograms would take 2 MB each, a third pass takes the last 9 bits instead.

Ties at the threshold key T: the common case (all of them pruned) needs nothing more. Otherwise three
small launches, whose programs return at once when no group has a partial tie, count the ties per
chunk in logical (row-major) order, scan the counts, and mark which ties are kept.

The first pass can also perturb the weights (the CrAM step: save w and g, w += rho * g) before it
histograms them, so the step reads the weights once for both.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_layout import Layout, layout, pointers, small_table

BLOCK = 4096
DIGITS = ((31, 19, 12), (19, 9, 10), (9, 0, 9))  # (prefix shift, digit shift, digit width)
FINE_BITS = 9  # pass 2 of the two-pass schedule resolves its digit and these low bits at once
FINE_GROUPS = 4  # at most this many groups take the two-pass schedule
MAX_BINS = 1 << 12
SCAN_BLOCK = 1024
ABS_MASK = 0x7FFFFFFF
LAUNCH = dict(num_warps=8, enable_fp_fusion=False)  # no FMA: products round like torch's


@triton.jit
def _pointer(table, t, dtype: tl.constexpr):
    return tl.load(table + t).to(tl.pointer_type(dtype))


@triton.jit
def _logical_offsets(index, sizes, strides, t):
    """Memory offsets of row-major indices `index` of tensor t (sizes/strides padded to 4 dims)."""
    s1 = tl.load(sizes + t * 4 + 1)
    s2 = tl.load(sizes + t * 4 + 2)
    s3 = tl.load(sizes + t * 4 + 3)
    i3 = index % s3
    rest = index // s3
    i2 = rest % s2
    rest = rest // s2
    i1 = rest % s1
    i0 = rest // s1
    return (i0 * tl.load(strides + t * 4) + i1 * tl.load(strides + t * 4 + 1)
            + i2 * tl.load(strides + t * 4 + 2) + i3 * tl.load(strides + t * 4 + 3))


@triton.jit
def _histogram_pass(keys_ptrs, grad_ptrs, wsave_ptrs, gsave_ptrs, rho, scale_ptr,
                    chunk_tensor, chunk_start, numel, groups, state, hist, fine,
                    prefix_shift, shift, NBINS: tl.constexpr, ROW: tl.constexpr,
                    FIRST: tl.constexpr, FINE: tl.constexpr, FINE_BINS: tl.constexpr,
                    HIST: tl.constexpr,
                    PERTURB: tl.constexpr, PLUS: tl.constexpr, NORM: tl.constexpr,
                    BLOCK: tl.constexpr):
    c = tl.program_id(0)
    t = tl.load(chunk_tensor + c)
    start = tl.load(chunk_start + c)
    offsets = start + tl.arange(0, BLOCK)
    valid = offsets < tl.load(numel + t)
    w_ptr = _pointer(keys_ptrs, t, tl.float32)
    w = tl.load(w_ptr + offsets, mask=valid, other=0.0)
    if PERTURB:  # the CrAM step's first half: save w (and g), w += rho * g
        g = tl.load(_pointer(grad_ptrs, t, tl.float32) + offsets, mask=valid, other=0.0)
        tl.store(_pointer(wsave_ptrs, t, tl.float32) + offsets, w, mask=valid)
        if PLUS:
            tl.store(_pointer(gsave_ptrs, t, tl.float32) + offsets, g, mask=valid)
        scale = tl.load(rho + t)
        if NORM:
            scale = tl.load(scale_ptr) * scale
        w = w + g * scale
        tl.store(w_ptr + offsets, w, mask=valid)
    if HIST:
        # (scalar conditions enter masks as limits: the interpreter cannot mix them with blocks)
        group = tl.load(groups + t)
        selected = offsets < tl.where(group >= 0, tl.load(numel + t), 0)
        key = w.to(tl.int32, bitcast=True) & 0x7FFFFFFF
        if not FIRST:
            prefix = tl.load(state + tl.maximum(group, 0) * 3)
            selected = selected & ((key >> prefix_shift).to(tl.int64) == prefix)
        digit = tl.where(selected, (key >> shift) & (NBINS - 1), 0)
        bins = tl.arange(0, NBINS)
        counts = tl.histogram(digit, NBINS)
        # the unselected keys were counted as digit 0: take them out again
        counts -= tl.where(bins == 0, tl.sum((~selected).to(tl.int32)), 0)
        tl.atomic_add(hist + tl.maximum(group, 0) * ROW + bins, counts,
                      mask=(counts > 0) & (bins < tl.where(group >= 0, NBINS, 0)))
        if FINE:  # every remaining bit: few keys share the prefix, so few atomics
            row = NBINS * FINE_BINS
            low = key & (row - 1)
            tl.atomic_add(fine + tl.maximum(group, 0) * row + low, tl.full(low.shape, 1, tl.int32),
                          mask=selected)


@triton.jit
def _pick_bin(counts, rank):
    """(bin holding the rank-th smallest key, rank within that bin, keys in that bin)."""
    bins = tl.arange(0, counts.shape[0])
    cumulative = tl.cumsum(counts, 0)
    digit = tl.sum((cumulative < rank).to(tl.int64))
    below = tl.sum(tl.where(bins < digit, counts, 0))
    return digit, rank - below, tl.sum(tl.where(bins == digit, counts, 0))


@triton.jit
def _pick_digit(hist, fine, state, k, WIDTH: tl.constexpr, NBINS: tl.constexpr,
                FIRST: tl.constexpr, FINE: tl.constexpr, FINE_BINS: tl.constexpr):
    """state[g] = (prefix, rank of the sought key among keys with that prefix, count at prefix)."""
    g = tl.program_id(0)
    counts = tl.load(hist + g * NBINS + tl.arange(0, NBINS)).to(tl.int64)
    if FIRST:
        prefix = tl.full([], 0, tl.int64)
        rank = tl.load(k + g)
    else:
        prefix = tl.load(state + g * 3)
        rank = tl.load(state + g * 3 + 1)
    digit, rank, ties = _pick_bin(counts, rank)
    prefix = (prefix << WIDTH) | digit
    if FINE:  # the fine bins under the chosen digit
        row = (1 << WIDTH) * FINE_BINS
        sub = tl.load(fine + g * row + digit * FINE_BINS + tl.arange(0, FINE_BINS)).to(tl.int64)
        digit, rank, ties = _pick_bin(sub, rank)
        prefix = (prefix * FINE_BINS) | digit
    tl.store(state + g * 3, prefix)
    tl.store(state + g * 3 + 1, rank)
    tl.store(state + g * 3 + 2, ties)


@triton.jit
def _partial_ties(state, group):
    """(threshold, ties to prune, whether only some of the ties at the threshold are pruned)."""
    g = tl.maximum(group, 0)
    threshold = tl.load(state + g * 3)
    to_prune = tl.load(state + g * 3 + 1)
    total = tl.load(state + g * 3 + 2)
    return threshold, to_prune, (group >= 0) & (to_prune > 0) & (to_prune < total)


@triton.jit
def _count_ties(keys_ptrs, chunk_tensor, chunk_start, numel, sizes, strides, groups, state,
                counts, BLOCK: tl.constexpr):
    c = tl.program_id(0)
    t = tl.load(chunk_tensor + c)
    threshold, _, partial = _partial_ties(state, tl.load(groups + t))
    index = tl.load(chunk_start + c) + tl.arange(0, BLOCK)
    limit = tl.where(partial, tl.load(numel + t), 0)
    valid = index < limit
    offsets = _logical_offsets(index, sizes, strides, t)
    key = tl.load(_pointer(keys_ptrs, t, tl.int32) + offsets, mask=valid, other=0) & 0x7FFFFFFF
    tl.store(counts + c, tl.sum((valid & (key.to(tl.int64) == threshold)).to(tl.int64)))


@triton.jit
def _exclusive_scan(counts, out, n, BLOCK: tl.constexpr):
    carry = tl.zeros([1], tl.int64)
    for start in range(0, n, BLOCK):
        index = start + tl.arange(0, BLOCK)
        x = tl.load(counts + index, mask=index < n, other=0)
        inclusive = tl.cumsum(x, 0)
        tl.store(out + index, carry + inclusive - x, mask=index < n)
        carry += tl.sum(x)


@triton.jit
def _mark_kept_ties(keys_ptrs, mask_ptrs, chunk_tensor, chunk_start, numel, sizes, strides, groups,
                    state, before, group_first_chunk, BLOCK: tl.constexpr):
    """Ties beyond the first `ties to prune` of their group (logical order) are kept."""
    c = tl.program_id(0)
    t = tl.load(chunk_tensor + c)
    group = tl.load(groups + t)
    threshold, to_prune, partial = _partial_ties(state, group)
    index = tl.load(chunk_start + c) + tl.arange(0, BLOCK)
    limit = tl.where(partial, tl.load(numel + t), 0)
    valid = index < limit
    offsets = _logical_offsets(index, sizes, strides, t)
    key = tl.load(_pointer(keys_ptrs, t, tl.int32) + offsets, mask=valid, other=0) & 0x7FFFFFFF
    tie = valid & (key.to(tl.int64) == threshold)
    tie64 = tie.to(tl.int64)
    first = tl.load(group_first_chunk + tl.maximum(group, 0))
    rank = tl.load(before + c) - tl.load(before + first) + tl.cumsum(tie64, 0) - tie64
    tl.store(_pointer(mask_ptrs, t, tl.int8) + offsets, (rank >= to_prune).to(tl.int8), mask=tie)


@triton.jit
def _apply_threshold(keys_ptrs, mask_ptrs, chunk_tensor, chunk_start, numel, groups, state,
                     ZERO: tl.constexpr, BLOCK: tl.constexpr):
    """mask = key > T (ties: all pruned, all kept, or as marked); with ZERO, pruned w become +-0."""
    c = tl.program_id(0)
    t = tl.load(chunk_tensor + c)
    group = tl.load(groups + t)
    threshold, to_prune, partial = _partial_ties(state, group)
    offsets = tl.load(chunk_start + c) + tl.arange(0, BLOCK)
    limit = tl.where(group >= 0, tl.load(numel + t), 0)
    valid = offsets < limit
    w_ptr = _pointer(keys_ptrs, t, tl.float32)
    mask_ptr = _pointer(mask_ptrs, t, tl.int8)
    w = tl.load(w_ptr + offsets, mask=valid, other=0.0)
    key = (w.to(tl.int32, bitcast=True) & 0x7FFFFFFF).to(tl.int64)
    tie = key == threshold
    marked = tl.load(mask_ptr + offsets, mask=tie & (offsets < tl.where(partial, limit, 0)),
                     other=0)
    # to_prune == 0: every tie is kept, i.e. keep key >= T
    keep = (key > tl.where(to_prune == 0, threshold - 1, threshold)) | (tie & (marked != 0))
    tl.store(mask_ptr + offsets, keep.to(tl.int8), mask=valid)
    if ZERO:
        tl.store(w_ptr + offsets, w * keep.to(tl.float32), mask=valid)


class Perturbation:
    """The CrAM step's first half, fused into the first histogram pass (see `select`)."""

    def __init__(self, grads, w_saves, g_saves, rhos, inv_norm=None):
        self.grads, self.w_saves, self.g_saves = grads, w_saves, g_saves
        self.rhos, self.inv_norm = rhos, inv_norm


def select(tensors, groups, counts, masks, zero: bool, perturb: Perturbation | None = None):
    """Masks pruning exactly `counts[g]` smallest magnitudes in each selection group g.

    tensors: dense float32 tensors on one device; groups[i]: group of tensor i (-1: not selected,
    only perturbed); masks[i]: bool output shaped and strided like tensors[i] (None when group -1).
    """
    device = tensors[0].device
    plan: Layout = layout(tensors, groups, BLOCK)
    grid = (max(plan.num_chunks, 1),)
    keys = pointers(tensors, device)
    mask_table = pointers(masks, device)
    num_groups = max(plan.num_groups, 1)
    k = small_table(list(counts) or [0], torch.int64, device)
    state = torch.empty((num_groups, 3), dtype=torch.int64, device=device)
    two_pass = num_groups <= FINE_GROUPS
    digits = DIGITS[:2] if two_pass else DIGITS
    hist = torch.zeros((len(digits), num_groups, MAX_BINS), dtype=torch.int32, device=device)
    fine_bins = 1 << FINE_BITS
    fine = (torch.zeros((num_groups, (1 << DIGITS[1][2]) * fine_bins), dtype=torch.int32,
                        device=device) if two_pass and plan.num_groups else hist)
    table_args = (plan.chunk_tensor, plan.chunk_start, plan.numel, plan.groups, state)
    for index, (prefix_shift, shift, width) in enumerate(digits):
        first = index == 0
        fused = first and perturb is not None
        p = perturb if fused else None
        with_fine = two_pass and index == 1
        _histogram_pass[grid](
            keys, pointers(p.grads, device) if p else keys,
            pointers(p.w_saves, device) if p else keys,
            pointers(p.g_saves, device) if p and p.g_saves else keys,
            small_table(p.rhos, torch.float32, device) if p else k,
            p.inv_norm if p is not None and p.inv_norm is not None else k,
            *table_args, hist[index], fine, prefix_shift, shift, NBINS=1 << width, ROW=MAX_BINS,
            FIRST=first, FINE=with_fine, FINE_BINS=fine_bins, HIST=plan.num_groups > 0,
            PERTURB=fused,
            PLUS=bool(p and p.g_saves), NORM=bool(p and p.inv_norm is not None), BLOCK=BLOCK,
            **LAUNCH)
        if plan.num_groups == 0:
            return
        _pick_digit[(num_groups,)](hist[index], fine, state, k, WIDTH=width, NBINS=MAX_BINS,
                                   FIRST=first, FINE=with_fine, FINE_BINS=fine_bins)
    _resolve_ties(plan, grid, keys, mask_table, state, device)
    _apply_threshold[grid](keys, mask_table, plan.chunk_tensor, plan.chunk_start, plan.numel,
                           plan.groups, state, ZERO=zero, BLOCK=BLOCK, **LAUNCH)


def _resolve_ties(plan, grid, keys, mask_table, state, device):
    counts = torch.empty(grid[0], dtype=torch.int64, device=device)
    before = torch.empty_like(counts)
    args = (plan.chunk_tensor, plan.chunk_start, plan.numel, plan.sizes, plan.strides,
            plan.groups, state)
    _count_ties[grid](keys, *args, counts, BLOCK=BLOCK, **LAUNCH)
    _exclusive_scan[(1,)](counts, before, grid[0], BLOCK=SCAN_BLOCK)
    _mark_kept_ties[grid](keys, mask_table, *args, before, plan.group_first_chunk, BLOCK=BLOCK,
                          **LAUNCH)
