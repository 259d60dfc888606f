"""The bracket select's exact fallback and its tie ranking (`triton_bracket`): passes over every
chunk, one program each, so that a miss or a tie pattern costs a few reads of the weights.

A bracket misses when the k-th key lies outside it, or its candidates overflow the workspace.
Then, with nothing read back to the host:
  1. (in the resolve launch) every chunk histograms its keys by their top bits (key >> SHIFT, 512
     bins, counted in the program, one atomic per bin); the last program to finish finds the bin
     holding the k-th smallest key and the rank within it: a bracket that cannot miss.
  2. `_fine_histogram`: the keys in that bin are counted per key in the bracket counters of the
     fast path (two levels, `l1`/`l2`); equal keys of a chunk -- an all-zero or all-equal
     tensor -- take one atomic, not one each. The last program picks the exact threshold key T,
     as the fast path's pick does (`pick_in_bracket`).
A partial tie (some, not all, keys equal to T pruned; on the fast path too, whatever the count):
  3. `_scan_ties`: every chunk counts its ties in row-major order; the last program turns the
     counts into an exclusive scan: the ties of the group before each chunk.
  4. `_settle_masks`: after a miss, every mask (and weight) from T in memory order; then each
     tie's rank is its chunk's scan plus its rank inside the chunk: the first `to_prune` ranks
     are pruned. So the tie rule is the torch path's -- among equal keys at the threshold the
     lowest (tensor, row-major index) goes first -- and the result is deterministic.

The launches run every call with a fixed grid; their programs return at once when there was no
miss (2) or no partial tie (3, 4). Keys are the weights as the fast path saw them: w, or in the
CrAM step w_saved + rho * g recomputed (`triton_perturb`: the same rounding), since the full pass
has already zeroed the weights below a missed bracket. The tie rule and workspace slots are
`triton_bracket`'s.
"""
from __future__ import annotations

import triton
import triton.language as tl

from . import triton_chunk as ck
from . import triton_perturb as pt

ABS_MASK = tl.constexpr(0x7FFFFFFF)
CHUNK = tl.constexpr(4096)  # the layout's chunk size (triton_bracket.BLOCK)
# workspace slots (the whole map: triton_bracket). counters: programs done (the last one finishes a pass) of the resolve launch,
# the fine pass and the tie count. state: the threshold key, ties to prune, ties in total, partial
# tie, miss (written by the pick or the fine pass); the fallback's coarse bin and rank in it.
_RESOLVED, _FINE_DONE, _COUNTED = tl.constexpr(2), tl.constexpr(3), tl.constexpr(5)
_THRESHOLD, _TO_PRUNE, _TIES = tl.constexpr(2), tl.constexpr(3), tl.constexpr(4)
_PARTIAL, _MISS, _BIN, _RANK = tl.constexpr(5), tl.constexpr(6), tl.constexpr(10), tl.constexpr(11)


@triton.jit
def source(keys_ptrs, grad_ptrs, wsave_ptrs, rho, scale_ptr, t, offsets, valid,
           PERTURB: tl.constexpr, NORM: tl.constexpr):
    """The (perturbed) weights the selection is about, at `offsets` of tensor t."""
    if PERTURB:
        w = tl.load(ck.pointer(wsave_ptrs, t, tl.float32) + offsets, mask=valid, other=0.0)
        g = tl.load(ck.pointer(grad_ptrs, t, tl.float32) + offsets, mask=valid, other=0.0)
        w = pt.perturbed(w, g, pt.step_scale(rho, scale_ptr, t, NORM))
    else:
        w = tl.load(ck.pointer(keys_ptrs, t, tl.float32) + offsets, mask=valid, other=0.0)
    return w


@triton.jit
def magnitude_key(w):
    return w.to(tl.int32, bitcast=True) & ABS_MASK


@triton.jit
def chunk_of(chunk_tensor, chunk_start, numel, groups, c):
    """(tensor, first index, element count, whether the tensor is selected) of chunk c."""
    t = tl.load(chunk_tensor + c)
    start = tl.load(chunk_start + c)
    return t, start, tl.minimum(tl.load(numel + t) - start, CHUNK), tl.load(groups + t) >= 0


@triton.jit
def pick_in_bracket(l1, l2, lo, wanted, L1: tl.constexpr, L1_SHIFT: tl.constexpr,
                    L1_SCAN: tl.constexpr):
    """(threshold key, keys equal to it that are pruned, keys equal to it) for the `wanted`-th
    smallest (wanted >= 1) of the keys counted per key above `lo` in l2 and per 1 << L1_SHIFT
    keys in l1. Clears l1 for the next call."""
    bins = tl.arange(0, L1_SCAN)
    digit = tl.zeros([], tl.int32)  # the l1 bin of the wanted rank
    below = tl.zeros([], tl.int32)  # keys in the bins before it
    carry = tl.zeros([], tl.int32)
    for start in range(0, L1, L1_SCAN):
        coarse = tl.load(l1 + start + bins, cache_modifier=".cg")
        tl.store(l1 + start + bins, tl.zeros([L1_SCAN], tl.int32))
        under = carry + tl.cumsum(coarse, 0) < wanted
        digit += tl.sum(under.to(tl.int32))
        below += tl.sum(tl.where(under, coarse, 0))
        carry += tl.sum(coarse, 0)
    digit = tl.minimum(digit, L1 - 1)
    rank = wanted - below
    SUB: tl.constexpr = 1 << L1_SHIFT
    sub = tl.arange(0, SUB)
    fine = tl.load(l2 + digit * SUB + sub, cache_modifier=".cg")
    under = tl.cumsum(fine, 0) < rank
    low = tl.minimum(tl.sum(under.to(tl.int32)), SUB - 1)
    threshold = lo + digit * SUB + low
    to_prune = (rank - tl.sum(tl.where(under, fine, 0))).to(tl.int64)
    return threshold, to_prune, tl.sum(tl.where(sub == low, fine, 0)).to(tl.int64)


@triton.jit
def coarse_pass(keys_ptrs, grad_ptrs, wsave_ptrs, rho, scale_ptr, chunk_tensor, chunk_start,
                numel, groups, num_chunks, counters, state, coarse, l2, k, PERTURB: tl.constexpr,
                NORM: tl.constexpr, SHIFT: tl.constexpr, FINE: tl.constexpr,
                LANES: tl.constexpr):
    """Step 1 of a miss, run by every program of the resolve launch (programs past the chunks
    only count themselves done). Each also clears the bracket counters its chunk's candidates
    raised in the full pass (the resolve does it on the fast path; a full spill area left some
    behind), for the fine pass and the next call."""
    BINS: tl.constexpr = (1 << 31) >> SHIFT
    bins = tl.arange(0, BINS)
    c = tl.program_id(0)
    if c < num_chunks:
        t, start, size, selected = chunk_of(chunk_tensor, chunk_start, numel, groups, c)
        if selected:
            lo = tl.load(state + 0).to(tl.int32)
            lanes = tl.arange(0, LANES)
            counts = tl.zeros([BINS], tl.int32)
            for s in range(0, size, LANES):
                valid = s + lanes < size
                key = magnitude_key(source(keys_ptrs, grad_ptrs, wsave_ptrs, rho, scale_ptr, t,
                                           start + s + lanes, valid, PERTURB, NORM))
                counted = valid & (key >= lo) & (key - lo < FINE)
                tl.store(l2 + key - lo, tl.zeros([LANES], tl.int32), mask=counted)
                # lanes past the chunk are counted in bin 0: taken out again
                counts += tl.histogram(tl.where(valid, key >> SHIFT, 0), BINS) - tl.where(
                    bins == 0, tl.sum((~valid).to(tl.int32)), 0)
            tl.atomic_add(coarse + bins, counts, mask=counts > 0, sem="relaxed")
    tl.debug_barrier()  # every thread's atomics before this program counts itself done
    if tl.atomic_add(counters + _RESOLVED, 1, sem="acq_rel") == tl.num_programs(0) - 1:
        counts = tl.load(coarse + bins, cache_modifier=".cg").to(tl.int64)
        tl.store(coarse + bins, tl.zeros([BINS], tl.int32))
        found = tl.minimum(tl.sum((tl.cumsum(counts, 0) < k).to(tl.int32)), BINS - 1)
        tl.store(state + _BIN, found.to(tl.int64))
        tl.store(state + _RANK, k - tl.sum(tl.where(bins < found, counts, 0)))
        tl.store(counters + _RESOLVED, 0)


@triton.jit
def _fine_histogram(keys_ptrs, grad_ptrs, wsave_ptrs, rho, scale_ptr, chunk_tensor, chunk_start,
                    numel, groups, counters, state, l1, l2, PERTURB: tl.constexpr,
                    NORM: tl.constexpr, SHIFT: tl.constexpr, L1: tl.constexpr,
                    L1_SHIFT: tl.constexpr, L1_SCAN: tl.constexpr):
    """Step 2 of a miss: one program per chunk."""
    if tl.load(state + _MISS) != 0:
        found = tl.load(state + _BIN).to(tl.int32)
        t, start, size, selected = chunk_of(chunk_tensor, chunk_start, numel, groups,
                                            tl.program_id(0))
        if selected:
            lanes = tl.arange(0, CHUNK)
            valid = lanes < size
            key = magnitude_key(source(keys_ptrs, grad_ptrs, wsave_ptrs, rho, scale_ptr, t,
                                       start + lanes, valid, PERTURB, NORM))
            inside = valid & ((key >> SHIFT) == found)
            fine = key & ((1 << SHIFT) - 1)
            # the chunk's smallest key in the bin with one atomic: ties would queue on one counter
            least = tl.min(tl.where(inside, fine, 1 << SHIFT), 0)
            same = inside & (fine == least)
            alone = inside & ~same
            ones = tl.full([CHUNK], 1, tl.int32)
            tl.atomic_add(l1 + (fine >> L1_SHIFT), ones, mask=alone, sem="relaxed")
            tl.atomic_add(l2 + fine, ones, mask=alone, sem="relaxed")
            equal = tl.sum(same.to(tl.int32), 0)
            if equal > 0:
                tl.atomic_add(l1 + (least >> L1_SHIFT), equal, sem="relaxed")
                tl.atomic_add(l2 + least, equal, sem="relaxed")
        tl.debug_barrier()
        if tl.atomic_add(counters + _FINE_DONE, 1, sem="acq_rel") == tl.num_programs(0) - 1:
            lo = found.to(tl.int64) << SHIFT
            wanted = tl.load(state + _RANK).to(tl.int32)
            threshold, to_prune, total = pick_in_bracket(l1, l2, lo, wanted, L1, L1_SHIFT,
                                                         L1_SCAN)
            none = wanted <= 0  # k == 0: every key is kept
            threshold = tl.where(none, lo - 1, threshold)
            to_prune = tl.where(none, 0, to_prune)
            total = tl.where(none, 0, total)
            tl.store(state + _THRESHOLD, threshold)
            tl.store(state + _TO_PRUNE, to_prune)
            tl.store(state + _TIES, total)
            tl.store(state + _PARTIAL, ((to_prune > 0) & (to_prune < total)).to(tl.int64))
            tl.store(counters + _FINE_DONE, 0)


@triton.jit
def _scan_ties(keys_ptrs, grad_ptrs, wsave_ptrs, rho, scale_ptr, chunk_tensor, chunk_start,
               numel, sizes, strides, groups, num_chunks, counters, state, tie_count,
               tie_before, PERTURB: tl.constexpr, NORM: tl.constexpr, SCAN: tl.constexpr):
    """Step 3: ties per chunk (row-major), then their exclusive scan."""
    if tl.load(state + _PARTIAL) != 0:
        c = tl.program_id(0)
        t, start, size, selected = chunk_of(chunk_tensor, chunk_start, numel, groups, c)
        count = tl.zeros([], tl.int32)
        if selected:
            lanes = tl.arange(0, CHUNK)
            valid = lanes < size
            offsets = ck.logical_offsets(start + lanes, sizes, strides, t)
            key = magnitude_key(source(keys_ptrs, grad_ptrs, wsave_ptrs, rho, scale_ptr, t,
                                       offsets, valid, PERTURB, NORM))
            threshold = tl.load(state + _THRESHOLD).to(tl.int32)
            count = tl.sum((valid & (key == threshold)).to(tl.int32), 0)
        tl.store(tie_count + c, count)
        tl.debug_barrier()
        if tl.atomic_add(counters + _COUNTED, 1, sem="acq_rel") == tl.num_programs(0) - 1:
            carry = tl.zeros([], tl.int64)
            for first in range(0, num_chunks, SCAN):
                index = first + tl.arange(0, SCAN)
                x = tl.load(tie_count + index, mask=index < num_chunks, other=0,
                            cache_modifier=".cg").to(tl.int64)
                tl.store(tie_before + index, carry + tl.cumsum(x, 0) - x, mask=index < num_chunks)
                carry += tl.sum(x, 0)
            tl.store(counters + _COUNTED, 0)


@triton.jit
def _settle_masks(keys_ptrs, mask_ptrs, grad_ptrs, wsave_ptrs, rho, scale_ptr, chunk_tensor,
                  chunk_start, numel, sizes, strides, groups, state, l2, tie_before,
                  PERTURB: tl.constexpr, NORM: tl.constexpr, ZERO: tl.constexpr,
                  SHIFT: tl.constexpr):
    """Step 4: after a miss every mask from the threshold; with a partial tie, the ties' masks.
    With ZERO the pruned weights become +-0, and in the CrAM step (PERTURB) the selected weights
    are rewritten from the recomputed perturbed values. After a miss each chunk also clears the
    counters its keys raised in the fine pass, for the next call."""
    miss = tl.load(state + _MISS) != 0
    partial = tl.load(state + _PARTIAL) != 0
    if miss | partial:
        c = tl.program_id(0)
        t, start, size, selected = chunk_of(chunk_tensor, chunk_start, numel, groups, c)
        if selected:
            threshold = tl.load(state + _THRESHOLD).to(tl.int32)
            to_prune = tl.load(state + _TO_PRUNE)
            lanes = tl.arange(0, CHUNK)
            valid = lanes < size
            mask_at = ck.pointer(mask_ptrs, t, tl.int8)
            w_at = ck.pointer(keys_ptrs, t, tl.float32)
            if miss:  # memory order; a partial tie's keys are left to the ranks below
                offsets = start + lanes
                w = source(keys_ptrs, grad_ptrs, wsave_ptrs, rho, scale_ptr, t, offsets, valid,
                           PERTURB, NORM)
                key = magnitude_key(w)
                counted = valid & ((key >> SHIFT) == tl.load(state + _BIN).to(tl.int32))
                tl.store(l2 + (key & ((1 << SHIFT) - 1)), tl.zeros([CHUNK], tl.int32),
                         mask=counted)
                # to_prune == 0 (k == 0): every key >= threshold is kept
                keep = key > tl.where(to_prune == 0, threshold - 1, threshold)
                write = valid & ~(partial & (key == threshold))
                tl.store(mask_at + offsets, keep.to(tl.int8), mask=write)
                if ZERO:
                    w = w * keep.to(tl.float32)
                if PERTURB or ZERO:
                    tl.store(w_at + offsets, w, mask=write)
            if partial:  # ties in row-major order: the group's first `to_prune` are pruned
                offsets = ck.logical_offsets(start + lanes, sizes, strides, t)
                w = source(keys_ptrs, grad_ptrs, wsave_ptrs, rho, scale_ptr, t, offsets, valid,
                           PERTURB, NORM)
                tie = valid & (magnitude_key(w) == threshold)
                ties = tie.to(tl.int64)
                keep = tl.load(tie_before + c) + tl.cumsum(ties, 0) - ties >= to_prune
                tl.store(mask_at + offsets, keep.to(tl.int8), mask=tie)
                if ZERO:
                    w = w * keep.to(tl.float32)
                if PERTURB or ZERO:
                    tl.store(w_at + offsets, w, mask=tie)
