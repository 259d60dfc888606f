"""Exact global top-k selection in one read of the weights: a sampled bracket, then candidates.

The radix select of `triton_select` histograms every key in two or three passes, and on triton 3.6
`tl.histogram` lowers to warp ballots: ~200 instructions per key, 20x the memory time. Here the
weights are read once, with two comparisons per key, for the k-th smallest of one selection
group (a global threshold; uniform sparsity keeps the radix passes). Four launches, then three
whose programs return at once unless a tie straddles the threshold or the bracket missed:

  1. sample (`_sample`)  1/128 of the keys (runs of 8, one 32-byte sector in every 4 KB, at a
                         hashed place; every key when there are few) go into a 16,384-bin
                         histogram of their top 14 bits (1/64 of an octave each; 4 interleaved
                         copies) with relaxed atomics. The last program to finish
                         turns it into a key bracket [lo, hi] around the target rank: +-6 standard
                         deviations of the sampled quantile plus 64 ranks, widened to whole bins.
  2. full (`_full`)      every key: above hi -> kept, below lo -> pruned (and zeroed), written at
                         once; each chunk stores how many it kept and its candidates inside the
                         bracket (key and lane) in a bucket of its own (a chunk with more than
                         fit spills the rest to a shared area, one atomic), and counts them per
                         key in a histogram of the bracket. Otherwise no atomic returns anything
                         and nothing waits for another program: a stream of loads and stores.
  3. pick (`_pick`)      one program: the counts of all chunks, the rank of the k-th key among the
                         candidates, and from the bracket histogram the exact threshold key.
  4. resolve (`_resolve`) one program per chunk bucket (and per block of the spill area): its
                         candidates' masks (and zeros) from that key; each candidate also clears
                         its bracket counter for the next call.
  5-7. `triton_fallback`  after a miss, an exact select over every chunk (a coarse histogram in
                         the resolve launch, then a fine one: a bracket that cannot miss) and
                         every mask; with a partial tie, the ties ranked by a scan.

So the workspace is left clean by every call (no memset launches) and nothing reads back to the
host. The tie rule is `masks.py`'s: among equal keys at the threshold, the lowest (tensor,
row-major index) is pruned first. A partial tie (equal float magnitudes straddling the k-th, any
number of them: a pruned checkpoint's zeros) is ranked across programs: ties per chunk in
row-major order, an exclusive scan of the counts, then each tie's rank (launches 6 and 7).

A bracket can miss: the k-th key lies outside it (an unlucky sample, or structured data, e.g.
every weight equal) or the spill area overflows. The pick detects it exactly (from the counts)
and the fallback's passes redo the selection over every chunk, so the result is always exact;
a miss costs about three more reads of the weights. Misses are counted in the workspace
(`Workspace.misses`).

With the CrAM step's perturbation (save w and g, w += rho * g) the sample computes w + rho * g on
the fly and the full pass stores it, both rounding like torch (no FMA); a miss recomputes the
perturbed weights from the saved ones. Without a perturbation only masks are written
(`magnitude_masks`); `compress_` alone keeps the radix passes, which zero in their apply pass.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import triton
import triton.language as tl

from . import triton_chunk as ck
from . import triton_fallback as fb
from . import triton_perturb as pt
from .triton_fallback import coarse_pass, pick_in_bracket

BLOCK = 4096                    # elements per chunk, as every weight pass
SAMPLE_RUN = 8                  # consecutive sampled keys: one 32-byte sector
# Settings measured side by side on an H200 (bench/bracket_configs.py; bench/results/
# gpu_h200_bracket_sweep): 4 copies and 1/128 of the keys took the sample pass from 181 to
# 37 us. Fewer keys sampled widen the bracket (+18 % candidates) but take 4x fewer atomics,
# which queue on the few bins of typical magnitudes.
SAMPLE_STRIDE = 1024            # one run in every 1024 keys: 1/128 of the bytes
SAMPLE_CHUNKS = 16              # chunks per program of the sample pass (one 2-D block)
# copies of the coarse histogram, interleaved (bin * COPIES + lane % COPIES): sampled keys
# crowd into the few bins of the weights' typical magnitudes, and atomics on one address queue
SAMPLE_COPIES = 4               # (a power of two)
BRACKET_SCAN = 4096             # the bracket pick reads this many bins a step, with their
BRACKET_SCAN_MAX = 16384        # copies, but at most this many counters (registers)
FULL_SAMPLE_MAX = 1 << 20       # groups up to this size sample every key
COARSE_SHIFT = 17               # coarse bins: the top 14 of the 31 key bits
COARSE_BINS = 1 << 14
MAX_SPAN = 32                   # coarse bins a bracket may span
FINE_WIDTH = MAX_SPAN << COARSE_SHIFT   # keys in the widest bracket: one counter each
L1_SHIFT = 10                   # the pick reads 4096 counters of 1024 keys, then 1024
PICK_SCAN = 4096                # counters the pick reads per step
BUCKET = 256                    # candidates a chunk keeps in its own bucket (~1 % of 4096 is usual)
SPILL_PER_CHUNK = 64            # more go to a shared spill area (one atomic per such chunk) of this
SPILL_MIN = 1 << 16             # many entries per chunk of the plan, at least SPILL_MIN
MAX_ELEMENTS = 1 << 31          # chunk * BLOCK + lane is an int32 here: larger layouts take radix
Z_SCORE, MIN_SLACK = 6.0, 64    # bracket half-width in sample ranks: Z sd + MIN_SLACK
# the fallback's coarse pass, in the resolve launch: 512 bins of key >> 22, a bin as wide as a
# bracket (FINE_WIDTH keys), read in blocks of 256 keys (registers shared with the resolve)
FALLBACK_SHIFT = FINE_WIDTH.bit_length() - 1
FALLBACK_LANES = 256
FALLBACK_LAUNCH = dict(num_warps=8, enable_fp_fusion=False)
TIE_SCAN = 4096                 # tie counts the scan reads per step
SAMPLE_LAUNCH = dict(num_warps=8, enable_fp_fusion=False)  # no FMA: w + rho * g rounds like torch
# 16 warps: 8 keys per thread, ~100 registers (the compile targets' limit is 128). Fewer warps
# ran the mask's pass faster (233 us at 16 warps in an earlier run; 224 at 8, 180 at 4 in the
# sweep) but take 184-196 and 255 registers (4 warps spill on sm_90); the CrAM step's variants
# are unmeasured that way, so they are not the default
FULL_LAUNCH = dict(num_warps=16, enable_fp_fusion=False)
PICK_LAUNCH = dict(num_warps=8)
# an explicit register budget: left alone, ptxas 13 (triton 3.8) gives the resolve launch 48
# registers and spills in the fallback's coarse pass
RESOLVE_LAUNCH = dict(num_warps=4, enable_fp_fusion=False, maxnreg=80)
ABS_MASK = fb.ABS_MASK

# Workspace slots, as the kernels index them. counters (int64): 0 sample programs done,
# 1 candidates spilled, 2 resolve / 3 fine / 5 tie count programs done (`triton_fallback`),
# 4 misses so far. state (int64): 0 lo, 1 hi (the bracket), 2 threshold key, 3 ties to prune,
# 4 ties in total, 5 partial tie, 6 miss, 7 candidates, 8 spilled candidates stored, 9 keys
# sampled, 10 and 11 the fallback's coarse bin and rank in it.
_MISSES, _PARTIAL, _MISS, _SAMPLED = 4, 5, 6, 9  # the slots read on the host (`misses`, tests)


# prune counts and ranks are plain integers (no divisibility specialisation): one compiled
# variant for every sparsity, so a CUDA graph captured for a new one compiles nothing
@triton.jit(do_not_specialize=["rank_lo", "rank_mid", "rank_hi"])
def _sample(keys_ptrs, grad_ptrs, rho, scale_ptr, chunk_tensor, chunk_start, numel, groups,
            num_chunks, coarse, counters, state, rank_lo, rank_mid, rank_hi,
            PERTURB: tl.constexpr, NORM: tl.constexpr, FULL_SAMPLE: tl.constexpr,
            FORCE_MISS: tl.constexpr, CHUNKS: tl.constexpr, BLOCK: tl.constexpr,
            SAMPLE: tl.constexpr, RUN: tl.constexpr, STRIDE: tl.constexpr,
            COARSE: tl.constexpr, SHIFT: tl.constexpr, SPAN: tl.constexpr,
            COPIES: tl.constexpr, SCAN: tl.constexpr):
    # CHUNKS chunks at once, as rows of one block: their loads are all in flight together
    rows = tl.program_id(0) * CHUNKS + tl.arange(0, CHUNKS)
    lane = tl.arange(0, SAMPLE)
    if FULL_SAMPLE:
        index = tl.zeros([CHUNKS, 1], tl.int32) + lane[None, :]
    else:  # run r of a chunk: RUN keys at a hashed slot of the r-th stretch of STRIDE keys
        run = lane // RUN
        slot = run_slot(rows[:, None], run[None, :], STRIDE // RUN)
        index = run[None, :] * STRIDE + slot * RUN + (lane % RUN)[None, :]
    live = rows < num_chunks
    t = tl.load(chunk_tensor + rows, mask=live, other=0)
    selected = live & (tl.load(groups + t, mask=live, other=-1) >= 0)
    start = tl.load(chunk_start + rows, mask=selected, other=0)
    size = tl.minimum(tl.load(numel + t, mask=selected, other=0) - start, BLOCK)
    valid = selected[:, None] & (index < size[:, None])
    offsets = start[:, None] + index
    w_at = tl.load(keys_ptrs + t, mask=selected, other=0).to(tl.pointer_type(tl.float32))
    w = tl.load(w_at[:, None] + offsets, mask=valid, other=0.0)
    if PERTURB:  # w + rho * g as the full pass computes it
        g_at = tl.load(grad_ptrs + t, mask=selected, other=0).to(tl.pointer_type(tl.float32))
        g = tl.load(g_at[:, None] + offsets, mask=valid, other=0.0)
        scale = tl.load(rho + t, mask=selected, other=0.0)
        if NORM:
            scale = tl.load(scale_ptr) * scale
        w = pt.perturbed(w, g, scale[:, None])
    key = w.to(tl.int32, bitcast=True) & ABS_MASK
    copy = (lane % COPIES)[None, :]
    tl.atomic_add(coarse + (key >> SHIFT) * COPIES + copy, tl.full([CHUNKS, SAMPLE], 1, tl.int32),
                  mask=valid, sem="relaxed")
    tl.debug_barrier()  # every thread's atomics before this program counts itself done
    if tl.atomic_add(counters + 0, 1, sem="acq_rel") == tl.num_programs(0) - 1:
        _pick_bracket(coarse, counters, state, rank_lo, rank_mid, rank_hi, FORCE_MISS, COARSE,
                      SHIFT, SPAN, COPIES, SCAN)


@triton.jit
def run_slot(chunk, run, SLOTS: tl.constexpr):
    """Which of the SLOTS runs of a stretch the sample reads: a hash of (chunk, run), int32
    arithmetic wrapping as `run_slots` does it on the host (SLOTS a power of two)."""
    h = chunk * 0x61C88647 + run * 0x27D4EB2F
    h = h ^ ((h >> 15) & 0x1FFFF)
    h = h * 0x2C1B3C6D
    return (h >> 16) & (SLOTS - 1)


@triton.jit
def _pick_bracket(coarse, counters, state, rank_lo, rank_mid, rank_hi, FORCE_MISS: tl.constexpr,
                  COARSE: tl.constexpr, SHIFT: tl.constexpr, SPAN: tl.constexpr,
                  COPIES: tl.constexpr, SCAN: tl.constexpr):
    """The last sample program: bins holding sample ranks rank_lo + 1, rank_mid and rank_hi ->
    state[lo, hi]; the histogram (SCAN counters, all copies of SCAN // COPIES bins, a step) is
    cleared for the next call."""
    BINS: tl.constexpr = SCAN // COPIES
    at = tl.arange(0, BINS)[:, None] * COPIES + tl.arange(0, COPIES)[None, :]
    carry = tl.zeros([], tl.int32)
    lo_bin = tl.zeros([], tl.int32)
    mid_bin = tl.zeros([], tl.int32)
    hi_bin = tl.zeros([], tl.int32)
    for start in range(0, COARSE * COPIES, SCAN):
        counts = tl.sum(tl.load(coarse + start + at, cache_modifier=".cg"), 1)
        cumulative = carry + tl.cumsum(counts, 0)
        lo_bin += tl.sum((cumulative <= rank_lo).to(tl.int32))
        mid_bin += tl.sum((cumulative < rank_mid).to(tl.int32))
        hi_bin += tl.sum((cumulative < rank_hi).to(tl.int32))
        tl.store(coarse + start + at, tl.zeros([BINS, COPIES], tl.int32))
        carry += tl.sum(counts, 0)
    # a bracket wider than SPAN bins keeps the SPAN around the expected rank (a miss if the
    # k-th key is outside: rare, and exact anyway)
    wide = hi_bin - lo_bin + 1 > SPAN
    lo_bin = tl.where(wide, tl.maximum(lo_bin, mid_bin - SPAN // 2 + 1), lo_bin)
    hi_bin = tl.where(wide, tl.minimum(hi_bin, lo_bin + SPAN - 1), hi_bin)
    lo = lo_bin.to(tl.int64) << SHIFT
    hi = tl.minimum(((hi_bin.to(tl.int64) + 1) << SHIFT) - 1, 0x7FFFFFFF)
    if FORCE_MISS:  # tests: a bracket that holds (almost) nothing
        lo = tl.full([], 0x7FFFFFFF, tl.int64)
        hi = tl.full([], 0x7FFFFFFF, tl.int64)
    tl.store(state + 0, lo)
    tl.store(state + 1, hi)
    tl.store(state + 9, carry.to(tl.int64))
    tl.store(counters + 0, 0)


@triton.jit
def _full(keys_ptrs, grad_ptrs, wsave_ptrs, gsave_ptrs, mask_ptrs, rho, scale_ptr,
          chunk_tensor, chunk_start, numel, groups, counters, state, l1, l2, above_count,
          cand_count, cand_keys, cand_lanes, spill_keys, spill_where, spill_cap,
          PERTURB: tl.constexpr, PLUS: tl.constexpr, NORM: tl.constexpr, ZERO: tl.constexpr,
          ALIGNED: tl.constexpr, BLOCK: tl.constexpr, FINE: tl.constexpr, L1_SHIFT: tl.constexpr,
          BUCKET: tl.constexpr):
    t, start, size = ck.chunk(chunk_tensor, chunk_start, numel, BLOCK)
    if size == BLOCK:
        _full_chunk(keys_ptrs, grad_ptrs, wsave_ptrs, gsave_ptrs, mask_ptrs, rho, scale_ptr,
                    groups, counters, state, l1, l2, above_count, cand_count, cand_keys,
                    cand_lanes, spill_keys, spill_where, spill_cap, t, start, size, PERTURB, PLUS,
                    NORM, ZERO, ALIGNED, True, BLOCK, FINE, L1_SHIFT, BUCKET)
    else:
        _full_chunk(keys_ptrs, grad_ptrs, wsave_ptrs, gsave_ptrs, mask_ptrs, rho, scale_ptr,
                    groups, counters, state, l1, l2, above_count, cand_count, cand_keys,
                    cand_lanes, spill_keys, spill_where, spill_cap, t, start, size, PERTURB, PLUS,
                    NORM, ZERO, ALIGNED, False, BLOCK, FINE, L1_SHIFT, BUCKET)


@triton.jit
def _full_chunk(keys_ptrs, grad_ptrs, wsave_ptrs, gsave_ptrs, mask_ptrs, rho, scale_ptr, groups,
                counters, state, l1, l2, above_count, cand_count, cand_keys, cand_lanes,
                spill_keys, spill_where, spill_cap, t, start, size,
                PERTURB: tl.constexpr, PLUS: tl.constexpr, NORM: tl.constexpr,
                ZERO: tl.constexpr, ALIGNED: tl.constexpr, FULL: tl.constexpr,
                BLOCK: tl.constexpr, FINE: tl.constexpr, L1_SHIFT: tl.constexpr,
                BUCKET: tl.constexpr):
    c = tl.program_id(0)
    w_at = ck.base(keys_ptrs, t, start, tl.float32, ALIGNED)
    w = ck.load(w_at, size, FULL, BLOCK)
    if PERTURB:  # the CrAM step's first half: save w (and g), w += rho * g
        w = pt.save_and_perturb(w, grad_ptrs, wsave_ptrs, gsave_ptrs, rho, scale_ptr, t, start,
                                size, PLUS, NORM, ALIGNED, FULL, BLOCK)
    if tl.load(groups + t) >= 0:
        valid = ck.in_chunk(size, FULL, BLOCK)
        key = w.to(tl.int32, bitcast=True) & ABS_MASK
        lo = tl.load(state + 0).to(tl.int32)
        hi = tl.load(state + 1).to(tl.int32)
        above = key > hi
        below = key < lo
        candidate = valid & ~above & ~below
        ck.store(ck.base(mask_ptrs, t, start, tl.int8, ALIGNED), above.to(tl.int8), size, FULL,
                 BLOCK)
        if ZERO:  # candidates keep their value until they are resolved
            w = w * (~below).to(tl.float32)
        if PERTURB or ZERO:  # stored now: w is dead during the compaction (registers)
            ck.store(w_at, w, size, FULL, BLOCK)
        count = tl.sum(candidate.to(tl.int32), 0)
        tl.store(above_count + c, tl.sum((valid & above).to(tl.int32), 0))
        tl.store(cand_count + c, count)
        if count > 0:  # this chunk's bucket: slots in lane order
            slot = tl.cumsum(candidate.to(tl.int32), 0) - 1
            stored = candidate & (slot < BUCKET)
            bucket = c.to(tl.int64) * BUCKET
            tl.store(cand_keys + bucket + slot, key, mask=stored)
            tl.store(cand_lanes + bucket + slot, tl.arange(0, BLOCK), mask=stored)
            if count > BUCKET:  # rare (a chunk dense near the threshold): the rest to the spill
                first = tl.atomic_add(counters + 1, count - BUCKET, sem="relaxed") - BUCKET
                # (scalar bases, int32 lanes: no 64-bit vectors in this kernel's registers)
                spilled = candidate & (slot >= BUCKET) & (slot < spill_cap - first)
                tl.store(spill_keys + first + slot, key, mask=spilled)
                tl.store(spill_where + first + slot, c * BLOCK + tl.arange(0, BLOCK),
                         mask=spilled)
            offset = key - lo
            counted = candidate & (offset < FINE)
            ones = tl.full([BLOCK], 1, tl.int32)
            tl.atomic_add(l1 + (offset >> L1_SHIFT), ones, mask=counted, sem="relaxed")
            tl.atomic_add(l2 + offset, ones, mask=counted, sem="relaxed")
    else:  # tensors outside the group (BatchNorm, biases) are only perturbed
        tl.store(above_count + c, 0)
        tl.store(cand_count + c, 0)
        if PERTURB:
            ck.store(w_at, w, size, FULL, BLOCK)


@triton.jit(do_not_specialize=["k", "n", "spill_cap"])
def _pick(counters, state, l1, l2, above_count, cand_count, num_chunks, k, n, spill_cap,
          FINE: tl.constexpr, L1: tl.constexpr, L1_SHIFT: tl.constexpr, L1_SCAN: tl.constexpr):
    """One program: the exact threshold key among the candidates, or a miss."""
    SCAN: tl.constexpr = 4096
    lanes = tl.arange(0, SCAN)
    above = tl.zeros([], tl.int64)
    candidates = tl.zeros([], tl.int64)
    for start in range(0, num_chunks, SCAN):
        index = start + lanes
        live = index < num_chunks
        above += tl.sum(tl.load(above_count + index, mask=live, other=0).to(tl.int64))
        candidates += tl.sum(tl.load(cand_count + index, mask=live, other=0).to(tl.int64))
    spilled = tl.load(counters + 1)
    tl.store(counters + 1, 0)
    tl.store(state + 8, tl.minimum(spilled, spill_cap))
    lo = tl.load(state + 0)
    hi = tl.load(state + 1)
    rank = k - (n - above - candidates)  # rank of the k-th key among the candidates
    miss = (rank < 0) | (rank > candidates) | (spilled > spill_cap) | (hi - lo + 1 > FINE)
    wanted = tl.maximum(tl.minimum(rank, candidates), 0).to(tl.int32)
    threshold, to_prune, total = pick_in_bracket(l1, l2, lo, wanted, L1, L1_SHIFT, L1_SCAN)
    none = rank <= 0  # no candidate pruned: every key >= lo is kept
    threshold = tl.where(none, lo - 1, threshold)
    to_prune = tl.where(none, 0, to_prune)
    total = tl.where(none, 0, total)
    # (after a miss the fallback's fine pass rewrites the threshold, the ties and this flag)
    partial = (to_prune > 0) & (to_prune < total) & ~miss
    tl.store(state + 2, threshold)
    tl.store(state + 3, to_prune)
    tl.store(state + 4, total)
    tl.store(state + 5, partial.to(tl.int64))
    tl.store(state + 6, miss.to(tl.int64))
    tl.store(state + 7, candidates)
    tl.store(counters + 4, tl.load(counters + 4) + miss.to(tl.int64))


@triton.jit(do_not_specialize=["k"])
def _resolve(keys_ptrs, mask_ptrs, grad_ptrs, wsave_ptrs, rho, scale_ptr, chunk_tensor,
             chunk_start, numel, groups, num_chunks, counters, state, l2, coarse, cand_count,
             cand_keys, cand_lanes, spill_keys, spill_where, k, PERTURB: tl.constexpr,
             NORM: tl.constexpr, ZERO: tl.constexpr, FINE: tl.constexpr, BUCKET: tl.constexpr,
             CHUNK: tl.constexpr, SHIFT: tl.constexpr, LANES: tl.constexpr):
    """Programs 0 .. num_chunks - 1: a chunk's bucket each; the others: BUCKET spilled
    candidates each. After a miss: the fallback's first pass instead (`triton_fallback`)."""
    if tl.load(state + 6) != 0:
        coarse_pass(keys_ptrs, grad_ptrs, wsave_ptrs, rho, scale_ptr, chunk_tensor, chunk_start,
                    numel, groups, num_chunks, counters, state, coarse, l2, k, PERTURB, NORM,
                    SHIFT, FINE, LANES)
    else:
        partial = tl.load(state + 5) != 0
        r = tl.program_id(0)
        slots = tl.arange(0, BUCKET)
        if r < num_chunks:  # the chunk's own bucket
            used = tl.minimum(tl.load(cand_count + r), BUCKET)
            bucket = r.to(tl.int64) * BUCKET
            valid = slots < used
            key = tl.load(cand_keys + bucket + slots, mask=valid, other=0)
            where = r * CHUNK + tl.load(cand_lanes + bucket + slots, mask=valid, other=0)
        else:  # a block of the spill area
            first = (r - num_chunks).to(tl.int64) * BUCKET
            used = tl.minimum(tl.load(state + 8) - first, BUCKET).to(tl.int32)
            valid = slots < used
            key = tl.load(spill_keys + first + slots, mask=valid, other=0)
            where = tl.load(spill_where + first + slots, mask=valid, other=0)
        if used > 0:
            _resolve_candidates(keys_ptrs, mask_ptrs, chunk_tensor, chunk_start, state, l2, key,
                                where, valid, partial, ZERO, FINE, BUCKET, CHUNK)


@triton.jit
def _resolve_candidates(keys_ptrs, mask_ptrs, chunk_tensor, chunk_start, state, l2, key, where,
                        valid, partial, ZERO: tl.constexpr, FINE: tl.constexpr,
                        LANES: tl.constexpr, CHUNK: tl.constexpr):
    """Masks (and zeros) of candidates at chunk * CHUNK + lane `where`; a partial tie's keys are
    left to the fallback's tie ranks (`triton_fallback._scan_ties`, `_settle_masks`)."""
    chunk = where // CHUNK
    t = tl.load(chunk_tensor + chunk, mask=valid, other=0)
    offset = tl.load(chunk_start + chunk, mask=valid, other=0) + where % CHUNK
    # every bracket counter the full pass raised belongs to a stored candidate: clear it
    fine = key - tl.load(state + 0).to(tl.int32)
    tl.store(l2 + fine, tl.zeros([LANES], tl.int32), mask=valid & (fine < FINE))
    threshold = tl.load(state + 2).to(tl.int32)
    keep = key > threshold
    write = valid & ~(partial & (key == threshold))
    mask_at = tl.load(mask_ptrs + t, mask=write, other=0).to(tl.pointer_type(tl.int8))
    tl.store(mask_at + offset, keep.to(tl.int8), mask=write)
    if ZERO:
        w_at = tl.load(keys_ptrs + t, mask=write, other=0).to(tl.pointer_type(tl.float32))
        w = tl.load(w_at + offset, mask=write, other=0.0)
        tl.store(w_at + offset, w * keep.to(tl.float32), mask=write)


# -- host side ------------------------------------------------------------------------------------
class Workspace:
    """Device scratch of the bracket select for up to `chunks` chunks, zero between calls where it
    must be (the kernels clear what they use; the per-chunk counts are rewritten every call).

    Calls that share a workspace must run in stream order (one stream), as a training step does."""

    def __init__(self, device: torch.device, chunks: int, bucket: int = BUCKET,
                 spill: int | None = None):
        self.chunks, self.bucket = chunks, bucket
        # the histogram layouts of the module's settings when made (a sweep may change them)
        self.copies, self.l1_shift = SAMPLE_COPIES, L1_SHIFT
        self.spill_cap = spill if spill is not None else max(chunks * SPILL_PER_CHUNK, SPILL_MIN)
        zeros = lambda n, dtype: torch.zeros(n, dtype=dtype, device=device)  # noqa: E731
        empty = lambda n, dtype: torch.empty(n, dtype=dtype, device=device)  # noqa: E731
        self.counters = zeros(8, torch.int64)
        self.state = zeros(16, torch.int64)
        self.spill_keys = empty(self.spill_cap, torch.int32)
        self.spill_where = empty(self.spill_cap, torch.int32)
        self.coarse = zeros(COARSE_BINS * self.copies, torch.int32)
        self.l1 = zeros(self.l1_bins, torch.int32)
        self.l2 = zeros(FINE_WIDTH, torch.int32)
        self.above_count = empty(chunks, torch.int32)
        self.cand_count = empty(chunks, torch.int32)
        self.cand_keys = empty(chunks * bucket, torch.int32)
        self.cand_lanes = empty(chunks * bucket, torch.int32)
        self.tie_count = empty(chunks, torch.int32)
        self.tie_before = empty(chunks, torch.int64)

    @property
    def l1_bins(self) -> int:
        """Counters of the bracket's first level, 1 << l1_shift keys each."""
        return FINE_WIDTH >> self.l1_shift

    @property
    def candidates(self) -> tuple:
        """The per-chunk candidate buckets (count, keys, lanes) and the spill area (keys, where),
        as the launches take them."""
        return self.cand_count, self.cand_keys, self.cand_lanes, self.spill_keys, self.spill_where

    @property
    def misses(self) -> torch.Tensor:
        """Brackets missed so far (each then selected by the exact fallback); on the device."""
        return self.counters[_MISSES]


_workspaces: dict = {}


def fits(num_chunks: int) -> bool:
    """Whether a layout of this many chunks keeps every chunk * BLOCK + lane within int32."""
    return num_chunks * BLOCK <= MAX_ELEMENTS


def workspace(device: torch.device, chunks: int) -> Workspace:
    """A workspace for at least `chunks` chunks on `device`, shared by the plans there."""
    space = _workspaces.get(device)
    if (space is None or space.chunks < chunks
            or (space.copies, space.l1_shift) != (SAMPLE_COPIES, L1_SHIFT)):
        space = _workspaces[device] = Workspace(device, chunks)
    return space


def _wrap32(x: np.ndarray) -> np.ndarray:
    """int64 values reduced to int32 two's complement, as the kernel's arithmetic wraps."""
    return (x + (1 << 31)) % (1 << 32) - (1 << 31)


def run_slots(chunks: np.ndarray, runs: np.ndarray, slots: int) -> np.ndarray:
    """`run_slot` on the host (int64 arrays holding int32 values)."""
    h = _wrap32(chunks * 0x61C88647 + runs * 0x27D4EB2F)
    h = h ^ ((h >> 15) & 0x1FFFF)
    h = _wrap32(h * 0x2C1B3C6D)
    return (h >> 16) & (slots - 1)


def sample_count(numels, groups, stride: int = SAMPLE_STRIDE) -> int:
    """How many keys the sample pass reads from the selected tensors: in every chunk of BLOCK
    keys (chunks numbered over all tensors, as the layout does), SAMPLE_RUN keys at the hashed
    slot of each stretch of `stride` keys. Slots are hashed rather than fixed: a fixed offset
    reads the same few input channels of every (channels_last) filter, a biased sample once
    channels differ in scale."""
    chunk, selected, sizes = 0, [], []
    for n, group in zip(numels, groups):
        count = -(-n // BLOCK)
        if group >= 0:
            selected.append(np.arange(chunk, chunk + count))
            sizes.append(np.minimum(n - np.arange(count) * BLOCK, BLOCK))
        chunk += count
    if not selected:
        return 0
    chunks, size = np.concatenate(selected)[:, None], np.concatenate(sizes)[:, None]
    runs = np.arange(BLOCK // stride)[None, :]
    first = runs * stride + run_slots(chunks, runs, stride // SAMPLE_RUN) * SAMPLE_RUN
    return int(np.clip(size - first, 0, SAMPLE_RUN).sum())


class BracketPlan:
    """What the seven launches of one selection group need beside the pointer tables: the
    layout's chunking, the sample size and bracket ranks per k, the workspace and grids."""

    def __init__(self, plan, numels, groups, device: torch.device):
        self.layout = plan
        self.n = sum(n for n, g in zip(numels, groups) if g >= 0)
        self.full_sample = self.n <= FULL_SAMPLE_MAX
        self.stride = SAMPLE_STRIDE
        self.m = self.n if self.full_sample else sample_count(numels, groups, self.stride)
        self.workspace = workspace(device, max(plan.num_chunks, 1))
        self.sample_chunks = 1 if self.full_sample else SAMPLE_CHUNKS  # per program
        self.sample_grid = (max(triton.cdiv(plan.num_chunks, self.sample_chunks), 1),)
        self.grid = (max(plan.num_chunks, 1),)
        self.resolve_grid = (plan.num_chunks + triton.cdiv(self.workspace.spill_cap,
                                                          self.workspace.bucket),)
        self._ranks: dict = {}

    def ranks(self, k: int) -> tuple[int, int, int]:
        """Sample ranks bounding the k-th key: expected rank -+ Z standard deviations of a
        sampled quantile (finite-population corrected) and MIN_SLACK."""
        ranks = self._ranks.get(k)
        if ranks is None:
            p = min(max(k / self.n, 0.0), 1.0) if self.n else 0.0
            mean = p * self.m
            sd = math.sqrt(max(self.m * p * (1 - p) * (1 - self.m / self.n), 0.0)) if self.n else 0
            slack = Z_SCORE * sd + MIN_SLACK
            ranks = self._ranks[k] = (math.floor(mean - slack), round(mean),
                                      math.ceil(mean + slack))
        return ranks

    def run(self, keys, masks, k: int, zero: bool, perturb=None, is_aligned: bool = True,
            force_miss: bool = False) -> None:
        """The seven launches. keys/masks: Pointers tables; perturb: the perturbation's argument
        tables and flags (`triton_select._perturbation_args`), or None."""
        plan, space = self.layout, self.workspace
        if perturb is None:
            grads = wsaves = gsaves = keys.table
            rho, scale, flags = space.counters, space.counters, dict(PERTURB=False, PLUS=False,
                                                                      NORM=False)
        else:
            (_, grads, wsaves, gsaves, rho, scale), flags = perturb
        rank_lo, rank_mid, rank_hi = self.ranks(k)
        chunks = (plan.chunk_tensor, plan.chunk_start, plan.numel)
        sample = BLOCK if self.full_sample else BLOCK // self.stride * SAMPLE_RUN
        _sample[self.sample_grid](
            keys.table, grads, rho, scale, *chunks, plan.groups, plan.num_chunks, space.coarse,
            space.counters, space.state, rank_lo, rank_mid, rank_hi, PERTURB=flags["PERTURB"],
            NORM=flags["NORM"], FULL_SAMPLE=self.full_sample, FORCE_MISS=force_miss,
            CHUNKS=self.sample_chunks, BLOCK=BLOCK, SAMPLE=sample, RUN=SAMPLE_RUN,
            STRIDE=self.stride, COARSE=COARSE_BINS, SHIFT=COARSE_SHIFT, SPAN=MAX_SPAN,
            COPIES=space.copies, SCAN=min(BRACKET_SCAN * space.copies, BRACKET_SCAN_MAX),
            **SAMPLE_LAUNCH)
        _full[self.grid](
            keys.table, grads, wsaves, gsaves, masks.table, rho, scale, *chunks, plan.groups,
            space.counters, space.state, space.l1, space.l2, space.above_count,
            *space.candidates, space.spill_cap, **flags, ZERO=zero, ALIGNED=is_aligned,
            BLOCK=BLOCK, FINE=FINE_WIDTH, L1_SHIFT=space.l1_shift, BUCKET=space.bucket,
            **FULL_LAUNCH)
        _pick[(1,)](space.counters, space.state, space.l1, space.l2, space.above_count,
                    space.cand_count, plan.num_chunks, k, self.n, space.spill_cap,
                    FINE=FINE_WIDTH, L1=space.l1_bins, L1_SHIFT=space.l1_shift,
                    L1_SCAN=min(PICK_SCAN, space.l1_bins), **PICK_LAUNCH)
        source = (keys.table, grads, wsaves, rho, scale)
        _resolve[self.resolve_grid](
            keys.table, masks.table, grads, wsaves, rho, scale, *chunks, plan.groups,
            plan.num_chunks, space.counters, space.state, space.l2, space.coarse,
            *space.candidates, k, PERTURB=flags["PERTURB"], NORM=flags["NORM"], ZERO=zero,
            FINE=FINE_WIDTH, BUCKET=space.bucket, CHUNK=BLOCK, SHIFT=FALLBACK_SHIFT,
            LANES=FALLBACK_LANES, **RESOLVE_LAUNCH)
        # the fallback and the tie ranks: programs that return at once on the fast path
        fb._fine_histogram[self.grid](
            *source, *chunks, plan.groups, space.counters, space.state, space.l1, space.l2,
            PERTURB=flags["PERTURB"], NORM=flags["NORM"], SHIFT=FALLBACK_SHIFT, L1=space.l1_bins,
            L1_SHIFT=space.l1_shift, L1_SCAN=min(PICK_SCAN, space.l1_bins), **FALLBACK_LAUNCH)
        fb._scan_ties[self.grid](
            *source, *chunks, plan.sizes, plan.strides, plan.groups, plan.num_chunks,
            space.counters, space.state, space.tie_count, space.tie_before,
            PERTURB=flags["PERTURB"], NORM=flags["NORM"], SCAN=TIE_SCAN, **FALLBACK_LAUNCH)
        fb._settle_masks[self.grid](
            keys.table, masks.table, grads, wsaves, rho, scale, *chunks, plan.sizes,
            plan.strides, plan.groups, space.state, space.l2, space.tie_before,
            PERTURB=flags["PERTURB"], NORM=flags["NORM"], ZERO=zero, SHIFT=FALLBACK_SHIFT,
            **FALLBACK_LAUNCH)
