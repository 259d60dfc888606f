"""CrAM (Peste et al., ICLR 2023): TopkCrAM and its N:M variant, exactly the step of SPEC §2.

    g   = grad f(w)                           (first pass, BN statistics updated)
    e   = rho * g            (or rho * g / ||g|| with grad_norm=True)
    M   = mask(w + e)        (top-k magnitudes of the prunable tensors: dim > 1)
    g_C = grad f((w + e) * M)                 (second pass, BN statistics frozen)
    d   = g_C * M (sparse_grad)  [+ g (plus_version)]
    w   <- base_optimizer(w, d)

Cheaper variants (issue 14; off by default, where the step above is unchanged):
    interval=k               the step above on every k-th step (steps 0, k, 2k, ... of the
                             optimizer's own counter); the others are one-pass steps, d = g
    reuse                    on those one-pass steps d = g + r, r the latest full step's d - g
    second_pass_fraction=f   g_C on the first ceil(f * B) samples of the batch (the caller's
                             second pass slices it: `second_pass_size(B)`)
Issue 27 adds two more (`cram_schedule`):
    start_step=S             steps before S are one-pass steps: CrAM over the last part only
    ramp_steps=T             the full-step rate rises linearly from 1/interval to 1 over T steps
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..sparsity.masks import (check_sparsity, compress_, nm_masks,
                              parse_pattern, selection_groups)
from .cram_schedule import check_schedule, is_full_step
from .fused import FusedStep
from .graphs import graph_problem
from .two_pass import TwoPassOptimizer


class _CompressedTwoPass(TwoPassOptimizer):
    """Shared CrAM machinery; subclasses choose and apply this step's masks.

    Two implementations of the step, equal bit for bit: torch ops (any device and dtype), and
    fused Triton passes (`ffcv_cram.kernels.triton_step`, run by `optim.fused.FusedStep`) for
    float32 parameters on CUDA, with no host synchronisation. `kernels=None` picks the fused path
    when it applies, False forces torch ops (also FFCV_CRAM_KERNELS=0), True requires the fused
    path (on the CPU: TRITON_INTERPRET=1).

    Cost options (module docstring). `interval=k`, `start_step`, `ramp_steps`: whether a step is
    a full CrAM step is a pure function of `cram_steps` (`cram_schedule.is_full_step`), the count of steps taken, saved in `state_dict` (so resumed runs
    and every DDP rank agree without communicating); a step discarded on fp16 overflow does not
    count. `full_step_due` says what the next step is; `step()` then needs no closure, and
    `one_pass_step()` takes it with the gradient already in `.grad`.
    `reuse`: what is reused is r = d - g of the latest full step, per parameter: with
    plus_version (CrAM+) exactly the compressed-point term M * g_C (g_C without sparse_grad),
    the part of the update the second pass computes; without plus_version, M * g_C - g. The
    one-pass update is then d = g + r. r is kept in `state` and saved in `state_dict`;
    parameters without a second-pass gradient in that step reuse nothing.
    """

    def __init__(self, params, base_optimizer, rho, grad_norm, plus_version, sparse_grad, seed,
                 kernels=None, interval: int = 1, reuse: bool = False,
                 second_pass_fraction: float = 1.0, cuda_graph: bool = False,
                 start_step: int = 0, ramp_steps: int = 0, **base_kwargs):
        super().__init__(params, base_optimizer, rho=rho, **base_kwargs)
        if kernels not in (None, True, False):
            raise ValueError(f"kernels={kernels!r}: must be None (automatic), True or False")
        check_schedule(interval, start_step, ramp_steps)
        if not isinstance(second_pass_fraction, (int, float)) or not 0 < second_pass_fraction <= 1:
            raise ValueError(f"second_pass_fraction={second_pass_fraction!r}: must be in (0, 1]")
        self.use_grad_norm = bool(grad_norm)
        self.plus_version = bool(plus_version)
        self.sparse_grad = bool(sparse_grad)
        self.kernels = kernels
        self.interval = interval
        self.start_step, self.ramp_steps = start_step, ramp_steps
        self.reuse = bool(reuse)
        self.second_pass_fraction = float(second_pass_fraction)
        self.cram_steps = 0            # steps taken, full and one-pass: the schedule's clock
        self.last_step_compressed = False
        self.generator = torch.Generator().manual_seed(int(seed))
        self._step_masks: list[torch.Tensor | None] = []  # aligned with the moved parameters
        self._fused = False  # whether this step takes the fused path
        self._second_key = ("second",)  # the second half's graph: one per table of step masks
        if cuda_graph:
            problem = graph_problem(self)
            if problem is not None:
                raise ValueError(problem)
        self._fused_step = FusedStep(self, cuda_graph)

    @property
    def _plan(self):
        """The fused step's StepPlan (None before its first step; tests and benchmarks look)."""
        return self._fused_step.plan

    @property
    def _graphs(self):
        """The fused step's CUDA graphs (None without cuda_graph=True; tests, benchmarks look)."""
        return self._fused_step.graphs

    # -- the cost options ----------------------------------------------------------------------
    @property
    def full_step_due(self) -> bool:
        """Whether the next step is a full (two-pass) CrAM step."""
        return is_full_step(self.cram_steps, self.interval, self.start_step, self.ramp_steps)

    def second_pass_size(self, batch_size: int) -> int:
        """ceil(second_pass_fraction * batch_size) samples for the second pass (at least 1)."""
        return max(1, math.ceil(round(self.second_pass_fraction * batch_size, 6)))

    @torch.no_grad()
    def step(self, closure=None):
        if not self.full_step_due:
            self.one_pass_step()
            return
        super().step(closure)

    def first_step(self, zero_grad: bool = False) -> None:
        if not self.full_step_due:
            raise RuntimeError(f"first_step(): step {self.cram_steps} is a one-pass step "
                               f"(interval={self.interval}); call one_pass_step() (or step())")
        super().first_step(zero_grad)

    def second_step(self, zero_grad: bool = False) -> None:
        super().second_step(zero_grad)
        self.cram_steps += 1
        self.last_step_compressed = True
        self._fused_step.count_full_step()

    # -- the fused path's halves (optim/fused.py; CUDA graphs: optim/graphs.py) ----------------
    def _base_step(self) -> None:
        self._fused_step.base_step()

    def _finish_and_step(self, moved) -> None:
        if (self._graphs is None or not self._fused or not moved
                or any(p.grad is None for p in moved)):
            super()._finish_and_step(moved)
            return
        self._step_masks = []
        self._fused_step.finish_and_step(moved, self.sparse_grad, self._second_key)

    @torch.no_grad()
    def one_pass_step(self, zero_grad: bool = False) -> None:
        """A step without the second pass: d = g (+ the reused term r with `reuse`)."""
        if self._moved is not None:
            raise RuntimeError("one_pass_step() called between first_step() and second_step()")
        if self.full_step_due:
            raise RuntimeError(f"one_pass_step(): step {self.cram_steps} is a full CrAM step "
                               f"(interval={self.interval}); call first_step() and second_step()")
        if self.reuse:
            pairs = [(p.grad, self.state[p]["reused"]) for p in self._params()
                     if p.grad is not None and "reused" in self.state[p]]
            if pairs:
                torch._foreach_add_([g for g, _ in pairs], [r for _, r in pairs])
        self._base_step()
        self.cram_steps += 1
        self.last_step_compressed = False
        if zero_grad:
            self.zero_grad()

    def _saves_grad(self) -> bool:
        """g is kept through the second pass: CrAM+ adds it, reuse without plus subtracts it."""
        return self.plus_version or self.reuse

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _keep_reused_term(self, moved) -> None:
        """r = d - g of this full step, from the second-pass gradient (already masked)."""
        for p in moved:
            if p.grad is None:
                self.state[p].pop("reused", None)
                continue
            reused = self.state[p].get("reused")
            if reused is None or reused.shape != p.grad.shape:
                reused = self.state[p]["reused"] = torch.empty_like(p.grad)
            if self.plus_version:
                reused.copy_(p.grad)
            else:
                torch.sub(p.grad, self.buffer(p, "g"), out=reused)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["cram_steps"] = self.cram_steps
        if self.reuse:
            state["reused"] = {i: self.state[p]["reused"] for i, p in enumerate(self._params())
                               if "reused" in self.state[p]}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._fused_step.invalidate_graphs()
        self.cram_steps = int(state_dict.get("cram_steps", 0))
        params = self._params()
        for p in params:
            self.state[p].pop("reused", None)
        for i, saved in state_dict.get("reused", {}).items():
            p = params[int(i)]
            self.state[p]["reused"] = torch.empty_like(p).copy_(saved)

    def _perturb(self, groups, moved):
        self._fused = bool(moved) and self._fused_step.applies(moved)
        if self._fused:
            plan = self._fused_step.plan_for(groups, moved)
            self._step_masks = self._perturb_and_compress_fused(plan, self._inv_grad_norm(moved))
            return
        self.save_weights(moved)
        if not moved:
            return
        if self._saves_grad():
            torch._foreach_copy_([self.buffer(p, "g") for p in moved], [p.grad for p in moved])
        inv_norm = self._inv_grad_norm(moved)
        for group, params in groups:
            if params:  # rho * g rounded before the add, as in the fused path (no FMA)
                scale = group["rho"] if inv_norm is None else inv_norm * group["rho"]
                torch._foreach_add_(params, torch._foreach_mul([p.grad for p in params], scale))
        prunable = [p for p in moved if self._compresses(p)]
        masks = iter(self._compress(prunable))
        self._step_masks = [next(masks) if self._compresses(p) else None for p in moved]

    def _selection_groups(self, masks):
        """Selection group of each moved parameter for the fused plan (None: no global/uniform
        selection, as in N:M)."""
        return None

    def _compresses(self, p: torch.Tensor) -> bool:
        """Whether the step compresses `p`: every tensor of rank > 1 (Conv and Linear weights)."""
        return p.dim() > 1

    def _inv_grad_norm(self, moved):
        return 1.0 / (self.grad_norm(moved) + 1e-12) if self.use_grad_norm else None

    def _finish(self, moved):
        masks, self._step_masks = self._step_masks, []
        if self._fused and not self.reuse:  # (the fused finish cannot hand out the reused term)
            if all(p.grad is not None for p in moved):
                self._fused_step.finish(moved, self.sparse_grad)
                return
            self._fused_step.report_fallback(moved[0].device,
                                             "a parameter got no gradient in the second pass")
        if self.sparse_grad:
            for p, mask in zip(moved, masks):
                if mask is not None and p.grad is not None:
                    p.grad.mul_(mask.view(torch.uint8))
        if self.reuse:
            self._keep_reused_term(moved)
        self.restore_and_add_saved_grad(moved, self.plus_version)

    def _compress(self, prunable) -> list:
        """Torch path: zero the pruned weights in place; return the keep-masks (None: dense)."""
        raise NotImplementedError

    def _perturb_and_compress_fused(self, plan, inv_norm) -> list:
        """Fused path: perturb every moved parameter, compress the prunable ones (those with a
        mask buffer) through `plan`; return the masks used, aligned with `moved` (None: dense)."""
        raise NotImplementedError


def _sparsity_list(sparsities) -> tuple[float, ...]:
    if isinstance(sparsities, (int, float)):
        sparsities = (sparsities,)
    values = tuple(check_sparsity(s, "sparsities") for s in sparsities)
    if not values:
        raise ValueError("sparsities: must list at least one sparsity, e.g. (0.5, 0.7, 0.9)")
    return values


class TopkCrAM(_CompressedTwoPass):
    """TopkCrAM(params, base_optimizer, rho=0.05, sparsities=(0.5, 0.7, 0.9), ...).

    Each step draws one sparsity uniformly from `sparsities` (seeded; identical on every rank)
    and compresses to it with one global threshold (scope='global', every tensor of rank > 1)
    or per tensor ('uniform', the reference's `unif_prune=True`): every tensor of rank > 1 except
    those in `dense`, by default the first and the last tensor of rank > 1 in parameter order --
    as the reference, which skips its model's first conv and classifier (the trainer passes them
    chosen by module type, the rule of one-shot uniform pruning). `last_sparsity` holds the
    latest draw.
    """

    def __init__(self, params, base_optimizer, rho: float = 0.05,
                 sparsities: Sequence[float] = (0.5, 0.7, 0.9), grad_norm: bool = False,
                 plus_version: bool = True, sparse_grad: bool = True, scope: str = "global",
                 seed: int = 0, unif_prune: bool | None = None, kernels: bool | None = None,
                 interval: int = 1, reuse: bool = False, second_pass_fraction: float = 1.0,
                 dense=None, start_step: int = 0, ramp_steps: int = 0,
                 **base_kwargs):
        if unif_prune:  # the reference's spelling of scope='uniform'
            scope = "uniform"
        if scope not in ("global", "uniform"):
            raise ValueError(f"scope={scope!r}: must be 'global' or 'uniform'")
        if dense is not None and scope != "uniform":
            raise ValueError("dense: only with scope='uniform' (global compresses every tensor "
                             "of rank > 1)")
        self.sparsities = sparsities
        self.scope = scope
        self.last_sparsity: float | None = None
        super().__init__(params, base_optimizer, rho, grad_norm, plus_version, sparse_grad, seed,
                         kernels, interval=interval, reuse=reuse,
                         second_pass_fraction=second_pass_fraction, start_step=start_step,
                         ramp_steps=ramp_steps, **base_kwargs)
        if scope == "uniform" and dense is None:
            ranked = [p for p in self._params() if p.dim() > 1]
            dense = ranked[:1] + ranked[-1:]
        self._dense = {id(p) for p in dense or ()}  # by identity: tensors compare elementwise

    @property
    def sparsities(self) -> tuple[float, ...]:
        return self._sparsities

    @sparsities.setter
    def sparsities(self, values) -> None:  # (captured graphs are keyed by the value drawn)
        self._sparsities = _sparsity_list(values)

    def _compresses(self, p: torch.Tensor) -> bool:
        return p.dim() > 1 and id(p) not in self._dense

    def _compress(self, prunable):
        self.last_sparsity = self.sparsities[self.draw(len(self.sparsities))]
        out = [self.buffer(p, "mask", torch.bool) for p in prunable]
        return compress_(prunable, self.last_sparsity, self.scope, out=out,
                         kernels=False if self.kernels is False else None)

    def _selection_groups(self, masks):
        prunable = [mask for mask in masks if mask is not None]
        selected = iter(selection_groups(prunable, 0.0, self.scope)[0])
        return [-1 if mask is None else next(selected) for mask in masks]

    def _perturb_and_compress_fused(self, plan, inv_norm):
        index = self.draw(len(self.sparsities))
        self.last_sparsity = self.sparsities[index]
        counts = plan.prune_counts(self.last_sparsity, self.scope)
        # keyed by the sparsity, not its index: the graph bakes in its prune counts
        self._fused_step.launch(("first", self.last_sparsity), plan.perturb_and_select, counts,
                                inv_norm)
        return plan.masks


class NMTopkCrAM(_CompressedTwoPass):
    """NMTopkCrAM(params, base_optimizer, rho=0.05, patterns=((2, 4), (4, 8)), ...).

    Each step draws one N:M pattern uniformly; tensors that cannot be split into groups of M stay
    dense for that step. `last_pattern` holds the latest draw.
    """

    def __init__(self, params, base_optimizer, rho: float = 0.05,
                 patterns=((2, 4), (4, 8)), grad_norm: bool = False, plus_version: bool = True,
                 sparse_grad: bool = True, seed: int = 0, kernels: bool | None = None,
                 interval: int = 1, reuse: bool = False, second_pass_fraction: float = 1.0,
                 start_step: int = 0, ramp_steps: int = 0, **base_kwargs):
        self.patterns = patterns
        self.last_pattern: tuple[int, int] | None = None
        super().__init__(params, base_optimizer, rho, grad_norm, plus_version, sparse_grad, seed,
                         kernels, interval=interval, reuse=reuse,
                         second_pass_fraction=second_pass_fraction, start_step=start_step,
                         ramp_steps=ramp_steps, **base_kwargs)

    @property
    def patterns(self) -> tuple[tuple[int, int], ...]:
        return self._patterns

    @patterns.setter
    def patterns(self, values) -> None:  # (captured graphs are keyed by the pattern drawn)
        one = len(values) == 2 and all(isinstance(x, int) for x in values)  # (2, 4) alone
        if isinstance(values, str) or one:
            values = (values,)
        patterns = tuple(parse_pattern(p) for p in values)
        if not patterns:
            raise ValueError("patterns: must list at least one N:M pattern, e.g. ((2, 4), (4, 8))")
        self._patterns = patterns

    def _compress(self, prunable):
        self.last_pattern = self.patterns[self.draw(len(self.patterns))]
        masks = nm_masks(prunable, *self.last_pattern,
                         kernels=False if self.kernels is False else None)
        for p, mask in zip(prunable, masks):
            if mask is not None:
                p.mul_(mask.view(torch.uint8))  # uint8 view: the fast float*int kernel
        return masks

    def _perturb_and_compress_fused(self, plan, inv_norm):
        index = self.draw(len(self.patterns))
        self.last_pattern = n, m = self.patterns[index]
        masks = plan.use_nm_masks(m)
        # keyed by the pattern, not its index: baked in
        self._fused_step.launch(("first", (n, m)), plan.perturb_and_nm_compress, n, m, inv_norm)
        self._second_key = ("second", m)  # the finish reads the masks of groups of m
        return masks
