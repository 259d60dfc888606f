"""The exact fallback of the bracket select (`triton_bracket`), run by one program.

When a bracket misses, the first program of the resolve launch selects alone: a radix select of
the k-th smallest key (digits of 8, 8, 8 and 7 bits, one sweep over every selected key each,
counted with atomics into 256 counters of the workspace),
then every mask (and, in the CrAM step, every perturbed weight) written in row-major order so
that partial ties follow the tie rule. Slow -- one multiprocessor does what the whole GPU does on
the fast path -- but a miss is rare, and the result is exact either way. Keeping it inside an
existing launch keeps a step at three launches and free of host decisions (graph-capturable).

Keys come from the weights as the full pass saw them: w, or in the CrAM step w_saved + rho * g
recomputed exactly (the full pass already zeroed the weights below the missed bracket).
"""
from __future__ import annotations

import triton
import triton.language as tl

from . import triton_chunk as ck

ABS_MASK = tl.constexpr(0x7FFFFFFF)
CHUNK = tl.constexpr(4096)  # the layout's chunk size (triton_bracket.BLOCK)


@triton.jit
def _source(keys_ptrs, grad_ptrs, wsave_ptrs, rho, scale_ptr, t, offsets, valid,
            PERTURB: tl.constexpr, NORM: tl.constexpr):
    """The (perturbed) weights the selection is about, at `offsets` of tensor t."""
    if PERTURB:
        w = tl.load(ck.pointer(wsave_ptrs, t, tl.float32) + offsets, mask=valid, other=0.0)
        g = tl.load(ck.pointer(grad_ptrs, t, tl.float32) + offsets, mask=valid, other=0.0)
        scale = tl.load(rho + t)
        if NORM:
            scale = tl.load(scale_ptr) * scale
        w = w + g * scale
    else:
        w = tl.load(ck.pointer(keys_ptrs, t, tl.float32) + offsets, mask=valid, other=0.0)
    return w


@triton.jit
def _kth_key(keys_ptrs, grad_ptrs, wsave_ptrs, rho, scale_ptr, chunk_tensor, chunk_start, numel,
             groups, num_chunks, counts, k, PERTURB: tl.constexpr, NORM: tl.constexpr,
             BLOCK: tl.constexpr):
    """(k-th smallest key, how many keys equal to it are pruned, keys equal to it): a radix
    select by digits of 8, 8, 8 and 7 bits. `counts`: 256 zeroed int32 counters of scratch,
    left zeroed."""
    lanes = tl.arange(0, BLOCK)
    ones = tl.full([BLOCK], 1, tl.int32)
    bins = tl.arange(0, 256)
    prefix = tl.zeros([], tl.int32)
    rank = tl.zeros([], tl.int64) + k
    ties = tl.zeros([], tl.int64)
    for d in range(4):  # a loop, not four inlined sweeps: one copy of the code for the compiler
        shift = tl.maximum(23 - 8 * d, 0)
        width = tl.where(d == 3, 7, 8)
        for c in range(num_chunks):
            t = tl.load(chunk_tensor + c)
            if tl.load(groups + t) >= 0:
                start = tl.load(chunk_start + c)
                size = tl.minimum(tl.load(numel + t) - start, CHUNK)
                for s in range(0, size, BLOCK):
                    valid = s + lanes < size
                    w = _source(keys_ptrs, grad_ptrs, wsave_ptrs, rho, scale_ptr, t,
                                start + s + lanes, valid, PERTURB, NORM)
                    key = w.to(tl.int32, bitcast=True) & ABS_MASK
                    selected = valid & ((key >> (shift + width)) == prefix)
                    # global atomics, not tl.histogram: no warp ballots or counter arrays in
                    # the kernel's registers (this path is rare; the fast path sets the budget)
                    tl.atomic_add(counts + ((key >> shift) & ((1 << width) - 1)), ones,
                                  mask=selected, sem="relaxed")
        tl.debug_barrier()
        found_counts = tl.load(counts + bins, cache_modifier=".cg").to(tl.int64)
        tl.debug_barrier()
        tl.store(counts + bins, tl.zeros([256], tl.int32))
        found = tl.sum((tl.cumsum(found_counts, 0) < rank).to(tl.int32))
        rank = rank - tl.sum(tl.where(bins < found, found_counts, 0))
        ties = tl.sum(tl.where(bins == found, found_counts, 0))
        prefix = (prefix << width) | found
    return prefix, rank, ties


@triton.jit
def fallback_select(keys_ptrs, mask_ptrs, grad_ptrs, wsave_ptrs, rho, scale_ptr, chunk_tensor,
                    chunk_start, numel, sizes, strides, groups, num_chunks, k, counts,
                    PERTURB: tl.constexpr, NORM: tl.constexpr, ZERO: tl.constexpr,
                    BLOCK: tl.constexpr):
    """Masks pruning exactly the k smallest keys of the selected tensors (tie rule: lowest
    (tensor, row-major index) first); with ZERO the pruned weights become +-0, and in the CrAM
    step (PERTURB) every selected weight is rewritten from the recomputed perturbed value."""
    threshold, to_prune, ties = _kth_key(keys_ptrs, grad_ptrs, wsave_ptrs, rho, scale_ptr,
                                         chunk_tensor, chunk_start, numel, groups, num_chunks,
                                         counts, k, PERTURB, NORM, BLOCK)
    # to_prune == 0 (k == 0): every key >= threshold is kept
    bound = tl.where(to_prune == 0, threshold - 1, threshold)
    lanes = tl.arange(0, BLOCK)
    seen = tl.zeros([], tl.int64)  # ties met so far, in row-major order
    for c in range(num_chunks):
        t = tl.load(chunk_tensor + c)
        if tl.load(groups + t) >= 0:
            start = tl.load(chunk_start + c)
            size = tl.minimum(tl.load(numel + t) - start, CHUNK)
            for s in range(0, size, BLOCK):
                valid = s + lanes < size
                offsets = ck.logical_offsets(start + s + lanes, sizes, strides, t)
                w = _source(keys_ptrs, grad_ptrs, wsave_ptrs, rho, scale_ptr, t, offsets, valid,
                            PERTURB, NORM)
                key = w.to(tl.int32, bitcast=True) & ABS_MASK
                tie = (valid & (key == threshold) & (to_prune > 0)).to(tl.int64)
                before = seen + tl.cumsum(tie, 0) - tie
                keep = (key > bound) | ((tie != 0) & (before >= to_prune))
                seen += tl.sum(tie, 0)
                tl.store(ck.pointer(mask_ptrs, t, tl.int8) + offsets, keep.to(tl.int8),
                         mask=valid)
                if ZERO:
                    w = w * keep.to(tl.float32)
                if PERTURB or ZERO:
                    tl.store(ck.pointer(keys_ptrs, t, tl.float32) + offsets, w, mask=valid)
