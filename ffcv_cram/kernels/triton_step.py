"""The CrAM step's element-wise passes, fused (float32 parameters), and the plan that launches them.

    first half   save w (and g), w += rho * g, select, w *= mask, write masks
                 -> `triton_bracket` (global: seven launches, three of which
                    return at once unless the bracket missed) or `triton_select` (uniform),
                    `triton_nm` after a perturbation pass (N:M)
    second half  g = g * mask + g_saved, w = w_saved                  -> `_finish` (one launch)

Arithmetic matches the torch path bit for bit: rho * g is rounded before it is added (no FMA),
masking multiplies by exactly 0 or 1.

`StepPlan` holds everything a step launches with -- tables of the parameters', buffers' and
gradients' addresses, the selection's workspace and layout -- built once per parameter list, so a
step costs the launches and one look at the gradients' addresses (autograd may hand out new ones;
their table is then rewritten in place, so captured CUDA graphs stay valid). Nothing is allocated
or copied to the device in a step that finds what it expects.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..prune_groups import nm_groupable, selection_groups
from . import triton_chunk as ck
from .triton_layout import ALIGNMENT, Pointers, layout, small_table
from .triton_nm import GROUPS_PER_PROGRAM, _grouping_view, _nm_select
from .triton_select import (BLOCK, LAUNCH, Perturbation, _histogram_pass, bracket_applies,
                            bracket_plan, radix_plan, run_selection)

__all__ = ["Perturbation", "StepPlan", "perturb", "perturb_and_select", "nm_compress", "finish"]


@triton.jit
def _finish(grad_ptrs, w_ptrs, wsave_ptrs, gsave_ptrs, mask_ptrs, out_ptrs, chunk_tensor,
            chunk_start, numel, SPARSE: tl.constexpr, PLUS: tl.constexpr, ALIGNED: tl.constexpr,
            BLOCK: tl.constexpr):
    t, start, size = ck.chunk(chunk_tensor, chunk_start, numel, BLOCK)
    if size == BLOCK:
        _finish_chunk(grad_ptrs, w_ptrs, wsave_ptrs, gsave_ptrs, mask_ptrs, out_ptrs, t, start,
                      size, SPARSE, PLUS, ALIGNED, True, BLOCK)
    else:
        _finish_chunk(grad_ptrs, w_ptrs, wsave_ptrs, gsave_ptrs, mask_ptrs, out_ptrs, t, start,
                      size, SPARSE, PLUS, ALIGNED, False, BLOCK)


@triton.jit
def _finish_chunk(grad_ptrs, w_ptrs, wsave_ptrs, gsave_ptrs, mask_ptrs, out_ptrs, t, start, size,
                  SPARSE: tl.constexpr, PLUS: tl.constexpr, ALIGNED: tl.constexpr,
                  FULL: tl.constexpr, BLOCK: tl.constexpr):
    g = ck.load(ck.base(grad_ptrs, t, start, tl.float32, ALIGNED), size, FULL, BLOCK)
    if SPARSE:
        if tl.load(mask_ptrs + t) != 0:  # tensors without a mask keep their gradient
            keep = ck.load(ck.base(mask_ptrs, t, start, tl.int8, ALIGNED), size, FULL, BLOCK)
            g = g * keep.to(tl.float32)
    if PLUS:
        g = g + ck.load(ck.base(gsave_ptrs, t, start, tl.float32, ALIGNED), size, FULL, BLOCK)
    ck.store(ck.base(out_ptrs, t, start, tl.float32, ALIGNED), g, size, FULL, BLOCK)
    w = ck.load(ck.base(wsave_ptrs, t, start, tl.float32, ALIGNED), size, FULL, BLOCK)
    ck.store(ck.base(w_ptrs, t, start, tl.float32, ALIGNED), w, size, FULL, BLOCK)


def _addresses(tensors) -> tuple:
    return tuple(0 if t is None else t.data_ptr() for t in tensors)


def _aligned(addresses) -> bool:
    return all(a % ALIGNMENT == 0 for a in addresses)


class _Table:
    """A device table of addresses owned by one plan: rewritten in place when they change, so
    that launches captured in a CUDA graph read the new ones."""

    def __init__(self, addresses, device):
        self.device = device
        self.pointers = Pointers(torch.empty(len(addresses), dtype=torch.int64, device=device),
                                 _aligned(addresses))
        self.addresses = None
        self.update(addresses)

    def update(self, addresses) -> bool:
        """Point the table at `addresses`; True if its alignment changed (another kernel
        variant then runs: captured graphs are stale)."""
        if addresses == self.addresses:
            return False
        self.addresses = addresses
        host = torch.tensor(addresses, dtype=torch.int64)
        if self.device.type == "cuda":  # pinned + non_blocking: no host synchronisation
            host = host.pin_memory()
        self.pointers.table.copy_(host, non_blocking=True)
        was = self.pointers.aligned
        self.pointers = Pointers(self.pointers.table, _aligned(addresses))
        return was != self.pointers.aligned


class StepPlan:
    """The fused step's launches over one list of parameters, and the state they share.

    params: the parameters moved this step (all with gradients); w_saves / g_saves: their
    buffers (g_saves None: g is not kept); masks: a bool buffer per prunable parameter, None for
    the others; rhos: rho per parameter; groups: selection group per parameter (-1: perturbed
    only), as `prune_groups.selection_groups` assigns them (TopkCrAM), or None (NMTopkCrAM:
    groups of M per pattern instead). The plan changes its own state only: the caller asks
    through its methods (`describes`, `gradients_checked`, `prune_counts`, `use_nm_masks`, ...).
    """

    def __init__(self, params, w_saves, g_saves, masks, rhos, groups=None):
        device = params[0].device
        self.device, self.params, self.masks = device, list(params), list(masks)
        self.param_addresses = _addresses(params)
        self.keys = _Table(self.param_addresses, device).pointers
        self.w_saves = _Table(_addresses(w_saves), device).pointers
        self.g_saves = (_Table(_addresses(g_saves), device).pointers if g_saves is not None
                        else None)
        self.mask_table = _Table(_addresses(masks), device).pointers
        self.step_masks = self.mask_table  # the masks of this step, aligned with params
        self.rhos = list(rhos)
        self.rho = small_table(rhos, torch.float32, device)
        self.first_grads = self.second_grads = None  # set by `use_gradients`
        self.version = 0  # bumped when a kernel variant changes (captured graphs are stale)
        self.groups = groups
        self.layout = layout(params, groups, BLOCK) if groups is not None else None
        self._counts: dict = {}  # prune counts per sparsity
        self._d = None  # (buffers, table) the finish writes d into with `into_d`
        self._checked_grads = None  # gradient addresses last found fit for the fused step
        self.finish_layout = layout(params, [-1] * len(params), BLOCK)
        self._nm: dict = {}

    def matches(self, params) -> bool:
        """Whether this plan still describes `params` (the same tensors at the same places)."""
        return (len(params) == len(self.params) and all(a is b for a, b in zip(params, self.params))
                and _addresses(params) == self.param_addresses)

    def describes(self, params, rhos) -> bool:
        """Whether this plan still describes `params` (`matches`) with these rho per parameter."""
        return self.rhos == list(rhos) and self.matches(params)

    def gradients_checked(self, addresses) -> bool:
        """Whether gradients at these addresses were found fit (`mark_gradients_checked`)."""
        return self._checked_grads == addresses

    def mark_gradients_checked(self, addresses) -> None:
        self._checked_grads = addresses

    def use_gradients(self, grads, second: bool = False, addresses=None) -> None:
        """The gradients of the first (perturbation) or second (finish) half (`addresses`:
        theirs, when the caller has them already)."""
        addresses = addresses or _addresses(grads)
        slot = "second_grads" if second else "first_grads"
        table = getattr(self, slot)
        if table is None:  # (no bump: no graph has read a table that did not exist)
            setattr(self, slot, _Table(addresses, self.device))
        elif table.update(addresses):
            self.version += 1

    # -- the first half --------------------------------------------------------------------------
    def _fused(self, inv_norm):
        grads = self.first_grads.pointers
        g_saves = self.g_saves or self.keys
        args = (self.keys.table, grads.table, self.w_saves.table, g_saves.table, self.rho,
                inv_norm if inv_norm is not None else self.rho)
        flags = dict(PERTURB=True, PLUS=self.g_saves is not None, NORM=inv_norm is not None)
        is_aligned = self.keys.aligned and grads.aligned and self.w_saves.aligned and (
            self.g_saves is None or self.g_saves.aligned)
        return args, flags, is_aligned

    def perturb_and_select(self, counts, inv_norm=None, method="auto", force_miss=False) -> None:
        """Perturb every parameter; prune the selected ones to `counts` per group, writing masks."""
        run_selection(self.layout, self.params, self.groups, self.keys, self.mask_table, counts,
                      True, self._fused(inv_norm), method, force_miss)
        self.step_masks = self.mask_table

    def perturb(self, inv_norm=None) -> None:
        """Perturb every parameter (save w and g, w += rho * g) in one pass."""
        plan = self.finish_layout
        args, flags, is_aligned = self._fused(inv_norm)
        _histogram_pass[(max(plan.num_chunks, 1),)](
            *args, plan.chunk_tensor, plan.chunk_start, plan.numel, plan.groups, self.rho,
            self.rho, self.rho, 0, 0, NBINS=1, ROW=1, FIRST=True, FINE=False, FINE_BINS=1,
            HIST=False, DIRECT=False, ALIGNED=is_aligned, **flags, BLOCK=BLOCK, **LAUNCH)

    def prune_counts(self, sparsity: float, scope: str) -> list:
        """The prune count of each selection group at `sparsity` (as `selection_groups` counts
        them for `scope`), made ready on the device on first use (see `prepare`)."""
        counts = self._counts.get(sparsity)
        if counts is None:
            prunable = [p for p, mask in zip(self.params, self.masks) if mask is not None]
            counts = self._counts[sparsity] = selection_groups(prunable, sparsity, scope)[1]
            self.prepare(counts)
        return counts

    def perturb_and_nm_compress(self, n: int, m: int, inv_norm=None) -> None:
        """`perturb`, then `nm_compress`: the N:M first half."""
        self.perturb(inv_norm)
        self.nm_compress(n, m)

    def use_nm_masks(self, m: int) -> list:
        """Make the masks of groups of M this step's (what the finish reads: a replayed launch
        sets nothing on the host); those masks, aligned with params (None: dense)."""
        nm = self.nm_plan(m)
        self.step_masks = nm.step_masks
        return nm.masks

    def nm_plan(self, m: int) -> "_NMPlan":
        """The N:M launch's tables for groups of M (built on first use)."""
        nm = self._nm.get(m)
        if nm is None:
            nm = self._nm[m] = _NMPlan(self.params, self.masks, m, self.device)
        return nm

    def nm_compress(self, n: int, m: int) -> list:
        """Prune every groupable prunable parameter to N:M in place; the masks, aligned with
        params (None: dense this step)."""
        nm = self.nm_plan(m)
        nm.run(n, m)
        self.step_masks = nm.step_masks
        return nm.masks

    def prepare(self, counts) -> None:
        """Build what a selection with these prune counts needs on the device (so that a
        capture of it allocates and copies nothing)."""
        if bracket_applies(self.layout, True, True):
            bracket_plan(self.layout, self.params, self.groups, self.device)
        else:
            radix_plan(self.layout, self.device).k_table(counts)

    def d_buffers(self, make) -> list:
        """The buffers `finish(..., into_d=True)` writes d into, made by `make()` on first use
        and kept with their address table (a captured finish writes to the same place)."""
        if self._d is None:
            buffers = list(make())
            self._d = buffers, _Table(_addresses(buffers), self.device).pointers
        return self._d[0]

    # -- the second half -------------------------------------------------------------------------
    def finish(self, sparse: bool, into_d: bool = False) -> None:
        """grad <- grad * mask (with `sparse`, where this step masked the parameter) + saved g
        (where kept);
        w <- saved w. `into_d`: write the gradient into `d_buffers` instead of the gradients."""
        plan = self.finish_layout
        if plan.num_chunks == 0:
            return
        grads = self.second_grads.pointers
        out = self._d[1] if into_d else grads
        tables = (grads, self.keys, self.w_saves, self.g_saves or grads, self.step_masks, out)
        _finish[(plan.num_chunks,)](
            *(table.table for table in tables), plan.chunk_tensor, plan.chunk_start, plan.numel,
            SPARSE=sparse, PLUS=self.g_saves is not None,
            ALIGNED=all(table.aligned for table in tables), BLOCK=BLOCK, **LAUNCH)


class _NMPlan:
    """The N:M launch over the parameters whose prunable weights split into groups of M."""

    def __init__(self, params, masks, m, device):
        self.masks = [mask if mask is not None and nm_groupable(p, m) else None
                      for p, mask in zip(params, masks)]
        self.step_masks = _Table(_addresses(self.masks), device).pointers
        grouped = [(p, mask) for p, mask in zip(params, self.masks) if mask is not None]
        views = [_grouping_view(p) for p, _ in grouped]
        self.layout = layout(views, [0] * len(views), GROUPS_PER_PROGRAM, unit=m) if views else None
        self.w = _Table(_addresses(views), device).pointers
        self.out = _Table(_addresses([_grouping_view(mask) for _, mask in grouped]),
                          device).pointers

    def run(self, n: int, m: int) -> None:
        plan = self.layout
        if plan is None or plan.num_chunks == 0:
            return
        _nm_select[(plan.num_chunks,)](
            self.w.table, self.out.table, plan.chunk_tensor, plan.chunk_start, plan.numel,
            plan.sizes, plan.strides, n, M=m, M_POW2=triton.next_power_of_2(m), ZERO=True,
            GROUPS=GROUPS_PER_PROGRAM, **LAUNCH)


# -- one-call forms (a plan built and used once): the mask API's tests and the AOT compile ---------
def _plan(params, perturbation: Perturbation, masks, groups=None) -> StepPlan:
    plan = StepPlan(params, perturbation.w_saves, perturbation.g_saves, masks, perturbation.rhos,
                    groups)
    plan.use_gradients(perturbation.grads)
    return plan


def perturb_and_select(params, perturbation, groups, counts, masks, **options) -> None:
    """Perturb every parameter; prune the selected ones to `counts` per group, writing masks."""
    _plan(params, perturbation, masks, groups).perturb_and_select(
        counts, perturbation.inv_norm, **options)


def perturb(params, perturbation) -> None:
    """Perturb every parameter (save w and g, w += rho * g) in one pass."""
    _plan(params, perturbation, [None] * len(params)).perturb(perturbation.inv_norm)


def nm_compress(params, masks, n: int, m: int) -> None:
    from .triton_nm import nm_select
    nm_select(params, masks, n, m, zero=True)


def finish(params, grads, w_saves, g_saves, masks) -> None:
    """grad <- grad * mask (where masks is given and has one) + saved g (where g_saves is given);
    w <- saved w. All lists aligned with params."""
    rhos = [0.0] * len(params)
    plan = StepPlan(params, w_saves, g_saves, masks if masks is not None else [None] * len(params),
                    rhos)
    plan.use_gradients(grads, second=True)
    plan.finish(sparse=masks is not None)

