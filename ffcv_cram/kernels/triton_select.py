"""Triton kernels of `masks.py`'s exact radix select, for float32 tensors, sync-free, and the
entry point (`select`) that sends a single selection group (a global threshold) to the faster
bracket select of `triton_bracket` instead (the radix passes stay for uniform sparsity and for
`compress_` without the CrAM perturbation).

The same algorithm and tie rule as the torch path, bit for bit: the k-th smallest 31-bit magnitude
key (the bit pattern of |w|) is found digit by digit. Each pass is one launch over all tensors that
histograms the next digit among the keys sharing the prefix found so far (per-program histograms,
added into a global one); a one-program-per-group launch then picks the digit holding the k-th
smallest key, on the device (no host synchronisation anywhere). Selection groups run side by side in
the same launches: one group for a global threshold, one per tensor for uniform sparsity.

Reading the weights is the cost, so with few groups (a global threshold) two passes suffice: the
first histograms the top 10 bits; the second, besides the next 10 bits, counts the keys sharing
that prefix (a small fraction) by all of their remaining 21 bits with global atomics, and the pick
reads the 2048 fine bins under its chosen 10-bit digit. With many groups (uniform), whose fine
histograms would take 8 MB each, a third pass counts the last 11 bits of the (very few) keys
sharing the 20-bit prefix with one global atomic each. Digits stay narrow because triton 3.6 (the
one GPU images ship with torch 2.11) lowers `tl.histogram` to NBINS / 32 counters per thread
(4096 bins: 128 registers, and spills); triton 3.8 counts in shared memory.

Ties at the threshold key T: the common case (all of them pruned) needs nothing more. Otherwise three
small launches, whose programs return at once when no group has a partial tie, count the ties per
chunk in logical (row-major) order, scan the counts, and mark which ties are kept.

The first pass can also perturb the weights (the CrAM step: save w and g, w += rho * g) before it
histograms them, so the step reads the weights once for both; unless the gradients are not 16-byte
aligned (DDP's bucket views), when the perturbation takes a pass of its own (see `select`).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import triton_chunk as ck
from . import triton_perturb as pt
from . import triton_bracket
from .triton_bracket import BracketPlan
from .triton_layout import Layout, aligned, layout, pointers, small_table

BLOCK = 4096
DIGITS = ((31, 21, 10), (21, 11, 10), (11, 0, 11))  # (prefix shift, digit shift, digit width)
FINE_BITS = 11  # pass 2 of the two-pass schedule resolves its digit and these low bits at once
FINE_GROUPS = 4  # at most this many groups take the two-pass schedule
MAX_BINS = 1 << 11
SCAN_BLOCK = 1024
ABS_MASK = tl.constexpr(0x7FFFFFFF)  # clears the sign bit: float bits -> magnitude key
LAUNCH = dict(num_warps=8, enable_fp_fusion=False)  # no FMA: products round like torch's
# pass 2 of the two-pass schedule runs 8 elements per thread, not 16: beside triton 3.6's 32
# histogram counters per thread its fine atomics otherwise need up to 168 registers (sm_80)
FINE_LAUNCH = dict(LAUNCH, num_warps=16)


@triton.jit
def _histogram_pass(keys_ptrs, grad_ptrs, wsave_ptrs, gsave_ptrs, rho, scale_ptr,
                    chunk_tensor, chunk_start, numel, groups, state, hist, fine,
                    prefix_shift, shift, NBINS: tl.constexpr, ROW: tl.constexpr,
                    FIRST: tl.constexpr, FINE: tl.constexpr, FINE_BINS: tl.constexpr,
                    HIST: tl.constexpr, DIRECT: tl.constexpr, PERTURB: tl.constexpr,
                    PLUS: tl.constexpr, NORM: tl.constexpr, ALIGNED: tl.constexpr,
                    BLOCK: tl.constexpr):
    t, start, size = ck.chunk(chunk_tensor, chunk_start, numel, BLOCK)
    if size == BLOCK:
        _histogram_chunk(keys_ptrs, grad_ptrs, wsave_ptrs, gsave_ptrs, rho, scale_ptr, groups,
                         state, hist, fine, t, start, size, prefix_shift, shift, NBINS, ROW,
                         FIRST, FINE, FINE_BINS, HIST, DIRECT, PERTURB, PLUS, NORM, ALIGNED, True,
                         BLOCK)
    else:
        _histogram_chunk(keys_ptrs, grad_ptrs, wsave_ptrs, gsave_ptrs, rho, scale_ptr, groups,
                         state, hist, fine, t, start, size, prefix_shift, shift, NBINS, ROW,
                         FIRST, FINE, FINE_BINS, HIST, DIRECT, PERTURB, PLUS, NORM, ALIGNED, False,
                         BLOCK)


@triton.jit
def _histogram_chunk(keys_ptrs, grad_ptrs, wsave_ptrs, gsave_ptrs, rho, scale_ptr, groups, state,
                     hist, fine, t, start, size, prefix_shift, shift, NBINS: tl.constexpr,
                     ROW: tl.constexpr, FIRST: tl.constexpr, FINE: tl.constexpr,
                     FINE_BINS: tl.constexpr, HIST: tl.constexpr, DIRECT: tl.constexpr,
                     PERTURB: tl.constexpr, PLUS: tl.constexpr, NORM: tl.constexpr,
                     ALIGNED: tl.constexpr, FULL: tl.constexpr, BLOCK: tl.constexpr):
    w_at = ck.base(keys_ptrs, t, start, tl.float32, ALIGNED)
    w = ck.load(w_at, size, FULL, BLOCK)
    if PERTURB:  # the CrAM step's first half: save w (and g), w += rho * g
        w = pt.save_and_perturb(w, grad_ptrs, wsave_ptrs, gsave_ptrs, rho, scale_ptr, t, start,
                                size, PLUS, NORM, ALIGNED, FULL, BLOCK)
        ck.store(w_at, w, size, FULL, BLOCK)
    if HIST:
        group = tl.load(groups + t)
        if group >= 0:  # tensors outside every group are only perturbed
            selected = ck.in_chunk(size, FULL, BLOCK)
            key = w.to(tl.int32, bitcast=True) & ABS_MASK
            if not FIRST:
                prefix = tl.load(state + group * 3).to(tl.int32)
                selected = selected & ((key >> prefix_shift) == prefix)
            ones = tl.full([BLOCK], 1, tl.int32)
            # relaxed atomics: only the launch boundary orders them with their readers
            if FINE:  # every remaining bit: few keys share the prefix, so few atomics
                row = NBINS * FINE_BINS
                tl.atomic_add(fine + group * row + (key & (row - 1)), ones, mask=selected,
                              sem="relaxed")
            digit = (key >> shift) & (NBINS - 1)
            if DIRECT:  # the last digit: so few keys share the prefix that atomics beat a histogram
                tl.atomic_add(hist + group * ROW + digit, ones, mask=selected, sem="relaxed")
            else:
                bins = tl.arange(0, NBINS)
                # the unselected keys are counted as digit 0: take them out again
                counts = tl.histogram(tl.where(selected, digit, 0), NBINS) - tl.where(
                    bins == 0, tl.sum((~selected).to(tl.int32)), 0)
                tl.atomic_add(hist + group * ROW + bins, counts, mask=counts > 0, sem="relaxed")


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
    """(threshold key, ties to prune, whether only some of the ties at the threshold are pruned)
    of a group >= 0."""
    threshold = tl.load(state + group * 3).to(tl.int32)  # a 31-bit key
    to_prune = tl.load(state + group * 3 + 1)
    total = tl.load(state + group * 3 + 2)
    return threshold, to_prune, (to_prune > 0) & (to_prune < total)


@triton.jit
def _tie_chunk(chunk_tensor, chunk_start, numel, groups, state, BLOCK: tl.constexpr):
    """(tensor, group, threshold, ties to prune, partial tie in a group, start, size) of this
    program's chunk."""
    t, start, size = ck.chunk(chunk_tensor, chunk_start, numel, BLOCK)
    group = tl.load(groups + t)
    threshold, to_prune, partial = _partial_ties(state, tl.maximum(group, 0))
    return t, group, threshold, to_prune, (group >= 0) & partial, start, size


@triton.jit
def _ties(keys_ptrs, t, start, size, sizes, strides, threshold, BLOCK: tl.constexpr):
    """Memory offsets of the chunk's elements in logical order, and which of them are ties."""
    index = tl.arange(0, BLOCK)
    valid = index < size
    offsets = ck.logical_offsets(start + index, sizes, strides, t)
    key = tl.load(ck.pointer(keys_ptrs, t, tl.int32) + offsets, mask=valid, other=0) & ABS_MASK
    return offsets, valid & (key == threshold)


@triton.jit
def _count_ties(keys_ptrs, chunk_tensor, chunk_start, numel, sizes, strides, groups, state,
                counts, BLOCK: tl.constexpr):
    t, group, threshold, to_prune, partial, start, size = _tie_chunk(
        chunk_tensor, chunk_start, numel, groups, state, BLOCK)
    if partial:
        _, tie = _ties(keys_ptrs, t, start, size, sizes, strides, threshold, BLOCK)
        tl.store(counts + tl.program_id(0), tl.sum(tie.to(tl.int32)))
    else:  # the usual case: exit at once
        tl.store(counts + tl.program_id(0), 0)


@triton.jit
def _exclusive_scan(counts, out, n, BLOCK: tl.constexpr):
    carry = tl.zeros([1], tl.int64)
    for start in range(0, n, BLOCK):
        index = start + tl.arange(0, BLOCK)
        x = tl.load(counts + index, mask=index < n, other=0).to(tl.int64)
        inclusive = tl.cumsum(x, 0)
        tl.store(out + index, carry + inclusive - x, mask=index < n)
        carry += tl.sum(x)


@triton.jit
def _mark_kept_ties(keys_ptrs, mask_ptrs, chunk_tensor, chunk_start, numel, sizes, strides, groups,
                    state, before, group_first_chunk, BLOCK: tl.constexpr):
    """Ties beyond the first `ties to prune` of their group (logical order) are kept."""
    t, group, threshold, to_prune, partial, start, size = _tie_chunk(
        chunk_tensor, chunk_start, numel, groups, state, BLOCK)
    if partial:
        offsets, tie = _ties(keys_ptrs, t, start, size, sizes, strides, threshold, BLOCK)
        tie32 = tie.to(tl.int32)
        c = tl.program_id(0)
        # ties of the group before this chunk, and the first kept tie's rank inside the chunk
        earlier = tl.load(before + c) - tl.load(before + tl.load(group_first_chunk + group))
        first_kept = tl.minimum(tl.maximum(to_prune - earlier, 0), BLOCK).to(tl.int32)
        rank = tl.cumsum(tie32, 0) - tie32
        tl.store(ck.pointer(mask_ptrs, t, tl.int8) + offsets, (rank >= first_kept).to(tl.int8),
                 mask=tie)


@triton.jit
def _apply_threshold(keys_ptrs, mask_ptrs, chunk_tensor, chunk_start, numel, groups, state,
                     ZERO: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    t, start, size = ck.chunk(chunk_tensor, chunk_start, numel, BLOCK)
    group = tl.load(groups + t)
    if group >= 0:  # tensors outside every group have no mask
        if size == BLOCK:
            _threshold_chunk(keys_ptrs, mask_ptrs, state, t, group, start, size, ZERO, ALIGNED,
                             True, BLOCK)
        else:
            _threshold_chunk(keys_ptrs, mask_ptrs, state, t, group, start, size, ZERO, ALIGNED,
                             False, BLOCK)


@triton.jit
def _threshold_chunk(keys_ptrs, mask_ptrs, state, t, group, start, size, ZERO: tl.constexpr,
                     ALIGNED: tl.constexpr, FULL: tl.constexpr, BLOCK: tl.constexpr):
    """mask = key > T (ties: all pruned, all kept, or as marked); with ZERO, pruned w become +-0."""
    threshold, to_prune, partial = _partial_ties(state, group)
    w_at = ck.base(keys_ptrs, t, start, tl.float32, ALIGNED)
    mask_at = ck.base(mask_ptrs, t, start, tl.int8, ALIGNED)
    w = ck.load(w_at, size, FULL, BLOCK)
    key = w.to(tl.int32, bitcast=True) & ABS_MASK
    # to_prune == 0: every tie is kept, i.e. keep key >= T
    keep = key > tl.where(to_prune == 0, threshold - 1, threshold)
    if partial:  # the ties _mark_kept_ties marked as kept
        tie = key == threshold
        index = tl.arange(0, BLOCK)
        marked = tl.load(mask_at + index, mask=tie & (index < size), other=0)
        keep = keep | (tie & (marked != 0))
    ck.store(mask_at, keep.to(tl.int8), size, FULL, BLOCK)
    if ZERO:
        ck.store(w_at, w * keep.to(tl.float32), size, FULL, BLOCK)


class Perturbation:
    """The CrAM step's first half, fused into the first histogram pass (see `select`)."""

    def __init__(self, grads, w_saves, g_saves, rhos, inv_norm=None):
        self.grads, self.w_saves, self.g_saves = grads, w_saves, g_saves
        self.rhos, self.inv_norm = rhos, inv_norm


def _perturbation_args(p: Perturbation | None, keys, placeholder, device):
    """(tables and scalars, flags, alignment) of the perturbation arguments of `_histogram_pass`;
    without a perturbation, placeholders that the pass does not read."""
    if p is None:
        flags = dict(PERTURB=False, PLUS=False, NORM=False)
        return (keys.table,) * 4 + (placeholder,) * 2, flags, keys.aligned
    tables = [pointers(p.grads, device), pointers(p.w_saves, device),
              pointers(p.g_saves, device) if p.g_saves else keys]
    args = (keys.table, *(t.table for t in tables), small_table(p.rhos, torch.float32, device),
            p.inv_norm if p.inv_norm is not None else placeholder)
    flags = dict(PERTURB=True, PLUS=bool(p.g_saves), NORM=p.inv_norm is not None)
    return args, flags, aligned(keys, *tables)


def select(tensors, groups, counts, masks, zero: bool, perturb: Perturbation | None = None,
           method: str = "auto", force_miss: bool = False):
    """Masks pruning exactly `counts[g]` smallest magnitudes in each selection group g.

    tensors: dense float32 tensors on one device; groups[i]: group of tensor i (-1: not selected,
    only perturbed); masks[i]: bool output shaped and strided like tensors[i] (None when group -1).
    method: 'bracket' (`triton_bracket`: one group, and it zeroes only in the CrAM step), 'radix'
    (the passes here), or 'auto': the bracket where it applies. `force_miss` (tests): the bracket
    misses, so its exact fallback runs.
    """
    device = tensors[0].device
    plan: Layout = layout(tensors, groups, BLOCK)
    keys, mask_table = pointers(tensors, device), pointers(masks, device)
    fused = None if perturb is None else _perturbation_args(perturb, keys, keys.table, device)
    run_selection(plan, tensors, groups, keys, mask_table, counts, zero, fused, method,
                  force_miss)


def bracket_applies(plan: Layout, zero: bool, perturb: bool) -> bool:
    """The bracket select takes one group of at most 2**31 elements (its offsets are int32), and
    zeroes pruned weights only in the CrAM step."""
    return (plan.num_groups == 1 and (perturb or not zero)
            and triton_bracket.fits(plan.num_chunks))


def run_selection(plan: Layout, tensors, groups, keys, mask_table, counts, zero: bool, fused,
                  method: str = "auto", force_miss: bool = False) -> None:
    """`select` on prepared tables; `fused` as `_perturbation_args` returns it (or None)."""
    applies = bracket_applies(plan, zero, fused is not None)
    if method == "bracket" and not applies:
        raise ValueError("the bracket select takes one selection group of at most 2**31 "
                         "elements, and zeroes pruned weights only together with the CrAM "
                         "perturbation")
    if method != "radix" and applies:
        is_aligned = aligned(keys, mask_table) and (fused is None or fused[2])
        bracket_plan(plan, tensors, groups, keys.table.device).run(
            keys, mask_table, int(counts[0]), zero, None if fused is None else fused[:2],
            is_aligned, force_miss)
    else:
        radix_plan(plan, keys.table.device).run(keys, mask_table, counts, zero, fused)


class RadixPlan:
    """The radix passes' scratch for one layout, allocated once (zeroed per call)."""

    def __init__(self, plan: Layout, device: torch.device):
        self.layout, self.grid = plan, (max(plan.num_chunks, 1),)
        self.num_groups = num_groups = max(plan.num_groups, 1)
        self.two_pass = num_groups <= FINE_GROUPS
        self.digits = DIGITS[:2] if self.two_pass else DIGITS
        self.state = torch.empty((num_groups, 3), dtype=torch.int64, device=device)
        self.hist = torch.zeros((len(self.digits), num_groups, MAX_BINS), dtype=torch.int32,
                                device=device)
        self.fine = (torch.zeros((num_groups, (1 << DIGITS[1][2]) << FINE_BITS),
                                 dtype=torch.int32, device=device)
                     if self.two_pass and plan.num_groups else self.hist)
        self.tie_counts = torch.empty(self.grid[0], dtype=torch.int32, device=device)
        self.before = torch.empty(self.grid[0], dtype=torch.int64, device=device)
        self.device, self.k_tables = device, {}

    def k_table(self, counts) -> torch.Tensor:
        """The prune counts per group as a device table owned by this plan: a captured CUDA graph
        reads it for as long as the graph lives, which the shared cache of small tables (it drops
        old entries) does not promise."""
        key = tuple(counts) or (0,)
        table = self.k_tables.get(key)
        if table is None:
            table = self.k_tables[key] = small_table(list(key), torch.int64, self.device)
        return table

    def run(self, keys, mask_table, counts, zero: bool, fused=None) -> None:
        plan, grid, device = self.layout, self.grid, keys.table.device
        k = self.k_table(counts)
        state, digits, two_pass = self.state, self.digits, self.two_pass
        hist, fine = self.hist, self.fine
        common = (plan.chunk_tensor, plan.chunk_start, plan.numel, plan.groups, state)
        fine_bins = 1 << FINE_BITS
        constants = dict(ROW=MAX_BINS, FINE_BINS=fine_bins, BLOCK=BLOCK)
        if fused is not None and (plan.num_groups == 0 or not fused[2]):
            # a pass of its own: nothing to select, or unaligned gradients (e.g. DDP's bucket
            # views) whose scalar accesses leave too few registers for a histogram as well
            args, flags, is_aligned = fused
            _histogram_pass[grid](*args, *common, hist[0], fine, 0, 0, NBINS=1 << digits[0][2],
                                  FIRST=True, FINE=False, HIST=False, DIRECT=False,
                                  ALIGNED=is_aligned, **flags, **constants, **LAUNCH)
            fused = None
        if plan.num_groups == 0:
            return
        hist.zero_()
        if two_pass:
            fine.zero_()
        for index, (prefix_shift, shift, width) in enumerate(digits):
            first, with_fine = index == 0, two_pass and index == 1
            args, flags, is_aligned = (fused if first and fused is not None
                                       else _perturbation_args(None, keys, k, device))
            _histogram_pass[grid](*args, *common, hist[index], fine, prefix_shift, shift,
                                  NBINS=1 << width, FIRST=first, FINE=with_fine, HIST=True,
                                  DIRECT=index == 2, ALIGNED=is_aligned, **flags, **constants,
                                  **(FINE_LAUNCH if with_fine else LAUNCH))
            _pick_digit[(self.num_groups,)](hist[index], fine, state, k, WIDTH=width,
                                            NBINS=MAX_BINS, FIRST=first, FINE=with_fine,
                                            FINE_BINS=fine_bins)
        args = (plan.chunk_tensor, plan.chunk_start, plan.numel, plan.sizes, plan.strides,
                plan.groups, state)
        _count_ties[grid](keys.table, *args, self.tie_counts, BLOCK=BLOCK, **LAUNCH)
        _exclusive_scan[(1,)](self.tie_counts, self.before, grid[0], BLOCK=SCAN_BLOCK)
        _mark_kept_ties[grid](keys.table, mask_table.table, *args, self.before,
                              plan.group_first_chunk, BLOCK=BLOCK, **LAUNCH)
        _apply_threshold[grid](keys.table, mask_table.table, *common, ZERO=zero,
                               ALIGNED=aligned(keys, mask_table), BLOCK=BLOCK, **LAUNCH)


def radix_plan(plan: Layout, device) -> RadixPlan:
    radix = getattr(plan, "radix", None)
    if radix is None:
        radix = plan.radix = RadixPlan(plan, device)
    return radix


def bracket_plan(plan: Layout, tensors, groups, device) -> BracketPlan:
    """The bracket select's plan of a layout (built once: layouts are cached)."""
    bracket = getattr(plan, "bracket", None)
    if bracket is None:
        bracket = plan.bracket = BracketPlan(plan, [t.numel() for t in tensors], groups, device)
    return bracket
