"""CrAM (Peste et al., ICLR 2023): TopkCrAM and its N:M variant, exactly the step of SPEC §2.

    g   = grad f(w)                           (first pass, BN statistics updated)
    e   = rho * g            (or rho * g / ||g|| with grad_norm=True)
    M   = mask(w + e)        (top-k magnitudes of the prunable tensors: dim > 1)
    g_C = grad f((w + e) * M)                 (second pass, BN statistics frozen)
    d   = g_C * M (sparse_grad)  [+ g (plus_version)]
    w   <- base_optimizer(w, d)
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from ..sparsity.masks import (check_sparsity, compress_, nm_groupable, nm_masks,
                              parse_pattern, selection_groups)
from .two_pass import TwoPassOptimizer


class _CompressedTwoPass(TwoPassOptimizer):
    """Shared CrAM machinery; subclasses choose and apply this step's masks.

    Two implementations of the step, equal bit for bit: torch ops (any device and dtype), and
    fused Triton passes (`ffcv_cram.kernels.triton_step`) for float32 parameters on CUDA, with no
    host synchronisation. `kernels=None` picks the fused path when it applies, False forces torch
    ops (also FFCV_CRAM_KERNELS=0), True requires the fused path (on the CPU: TRITON_INTERPRET=1).
    """

    def __init__(self, params, base_optimizer, rho, grad_norm, plus_version, sparse_grad, seed,
                 kernels=None, **base_kwargs):
        super().__init__(params, base_optimizer, rho=rho, **base_kwargs)
        if kernels not in (None, True, False):
            raise ValueError(f"kernels={kernels!r}: must be None (automatic), True or False")
        self.use_grad_norm = bool(grad_norm)
        self.plus_version = bool(plus_version)
        self.sparse_grad = bool(sparse_grad)
        self.kernels = kernels
        self.generator = torch.Generator().manual_seed(int(seed))
        self._step_masks: list[torch.Tensor | None] = []  # aligned with the moved parameters
        self._fused = False
        self._fallback_reported = False

    def _perturb(self, groups, moved):
        self._fused = bool(moved) and self._fused_path_applies(moved)
        if self._fused:
            from ..kernels.triton_step import Perturbation
            prunable = [p.dim() > 1 for p in moved]
            masks = [self.buffer(p, "mask", torch.bool) if flag else None
                     for p, flag in zip(moved, prunable)]
            perturbation = Perturbation(
                [p.grad for p in moved], [self.buffer(p, "w") for p in moved],
                [self.buffer(p, "g") for p in moved] if self.plus_version else None,
                [group["rho"] for group, params in groups for _ in params],
                self._inv_grad_norm(moved))
            self._step_masks = self._perturb_and_compress_fused(moved, perturbation, masks)
            return
        self.save_weights(moved)
        if not moved:
            return
        if self.plus_version:
            torch._foreach_copy_([self.buffer(p, "g") for p in moved], [p.grad for p in moved])
        inv_norm = self._inv_grad_norm(moved)
        for group, params in groups:
            if params:  # rho * g rounded before the add, as in the fused path (no FMA)
                scale = group["rho"] if inv_norm is None else inv_norm * group["rho"]
                torch._foreach_add_(params, torch._foreach_mul([p.grad for p in params], scale))
        prunable = [p for p in moved if p.dim() > 1]
        masks = iter(self._compress(prunable))
        self._step_masks = [next(masks) if p.dim() > 1 else None for p in moved]

    def _inv_grad_norm(self, moved):
        return 1.0 / (self.grad_norm(moved) + 1e-12) if self.use_grad_norm else None

    def _fused_path_applies(self, moved) -> bool:
        if self.kernels is False:
            return False
        reason = fused_step_misfit(moved, explicit=self.kernels is True)
        if reason is None:
            return True
        if self.kernels is True:
            raise RuntimeError(
                f"{type(self).__name__}(kernels=True): the fused step cannot run: {reason}. It "
                "needs dense float32 parameters and gradients with at most 4 dims on one CUDA "
                "device (on the CPU: TRITON_INTERPRET=1) and FFCV_CRAM_KERNELS not 0; pass "
                "kernels=None to fall back")
        self._report_fallback(moved[0].device, reason)
        return False

    def _report_fallback(self, device, reason: str) -> None:
        """Say once per optimizer why CUDA parameters take the torch path, which waits for the
        host several times per step (elsewhere the torch path is the expected one)."""
        if self._fallback_reported or not _fallback_matters(device):
            return
        self._fallback_reported = True
        warnings.warn(f"{type(self).__name__}: the fused Triton step does not apply ({reason}); "
                      "the torch path runs instead, with several host synchronisations per step",
                      RuntimeWarning, stacklevel=4)

    def _finish(self, moved):
        masks, self._step_masks = self._step_masks, []
        if self._fused:
            if all(p.grad is not None for p in moved):
                from ..kernels.triton_step import finish
                finish(moved, [p.grad for p in moved], [self.buffer(p, "w") for p in moved],
                       [self.buffer(p, "g") for p in moved] if self.plus_version else None,
                       masks if self.sparse_grad else None)
                return
            self._report_fallback(moved[0].device,
                                  "a parameter got no gradient in the second pass")
        if self.sparse_grad:
            for p, mask in zip(moved, masks):
                if mask is not None and p.grad is not None:
                    p.grad.mul_(mask.view(torch.uint8))
        self.restore_and_add_saved_grad(moved, self.plus_version)

    def _compress(self, prunable) -> list:
        """Torch path: zero the pruned weights in place; return the keep-masks (None: dense)."""
        raise NotImplementedError

    def _perturb_and_compress_fused(self, moved, perturbation, masks) -> list:
        """Fused path: perturb every moved parameter, compress the prunable ones (those with a
        mask buffer); return the masks used, aligned with `moved` (None: dense)."""
        raise NotImplementedError


def fused_step_misfit(params, explicit: bool = False) -> str | None:
    """Why the fused Triton step cannot take these parameters and their gradients (None: it can)."""
    from ..kernels import triton_layout as layout
    reason = layout.unusable_reason(params[0].device, explicit) or layout.misfit(params)
    if reason is not None:
        return reason
    for p in params:
        if p.grad.dtype != p.dtype:
            return f"a {p.grad.dtype} gradient of a {p.dtype} parameter"
        if not layout.same_layout(p.grad, p):
            return (f"a gradient laid out unlike its parameter (shape {tuple(p.shape)}: strides "
                    f"{p.grad.stride()} and {p.stride()})")
    return None


def _fallback_matters(device: torch.device) -> bool:
    return device.type == "cuda"


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
    and compresses to it with one global threshold (scope='global') or per tensor ('uniform';
    the reference's `unif_prune=True`). `last_sparsity` holds the latest draw.
    """

    def __init__(self, params, base_optimizer, rho: float = 0.05,
                 sparsities: Sequence[float] = (0.5, 0.7, 0.9), grad_norm: bool = False,
                 plus_version: bool = True, sparse_grad: bool = True, scope: str = "global",
                 seed: int = 0, unif_prune: bool | None = None, kernels: bool | None = None,
                 **base_kwargs):
        if unif_prune:  # the reference's spelling of scope='uniform'
            scope = "uniform"
        if scope not in ("global", "uniform"):
            raise ValueError(f"scope={scope!r}: must be 'global' or 'uniform'")
        self.sparsities = _sparsity_list(sparsities)
        self.scope = scope
        self.last_sparsity: float | None = None
        super().__init__(params, base_optimizer, rho, grad_norm, plus_version, sparse_grad, seed,
                         kernels, **base_kwargs)

    def _compress(self, prunable):
        self.last_sparsity = self.sparsities[self.draw(len(self.sparsities))]
        out = [self.buffer(p, "mask", torch.bool) for p in prunable]
        return compress_(prunable, self.last_sparsity, self.scope, out=out,
                         kernels=False if self.kernels is False else None)

    def _perturb_and_compress_fused(self, moved, perturbation, masks):
        from ..kernels.triton_step import perturb_and_select
        self.last_sparsity = self.sparsities[self.draw(len(self.sparsities))]
        prunable = [p for p, mask in zip(moved, masks) if mask is not None]
        prunable_groups, counts = selection_groups(prunable, self.last_sparsity, self.scope)
        groups, selected = [], iter(prunable_groups)
        for mask in masks:
            groups.append(-1 if mask is None else next(selected))
        perturb_and_select(moved, perturbation, groups, counts, masks)
        return masks


class NMTopkCrAM(_CompressedTwoPass):
    """NMTopkCrAM(params, base_optimizer, rho=0.05, patterns=((2, 4), (4, 8)), ...).

    Each step draws one N:M pattern uniformly; tensors that cannot be split into groups of M stay
    dense for that step. `last_pattern` holds the latest draw.
    """

    def __init__(self, params, base_optimizer, rho: float = 0.05,
                 patterns=((2, 4), (4, 8)), grad_norm: bool = False, plus_version: bool = True,
                 sparse_grad: bool = True, seed: int = 0, kernels: bool | None = None,
                 **base_kwargs):
        if isinstance(patterns, str) or (len(patterns) == 2 and all(isinstance(x, int) for x in patterns)):
            patterns = (patterns,)
        self.patterns = tuple(parse_pattern(p) for p in patterns)
        if not self.patterns:
            raise ValueError("patterns: must list at least one N:M pattern, e.g. ((2, 4), (4, 8))")
        self.last_pattern: tuple[int, int] | None = None
        super().__init__(params, base_optimizer, rho, grad_norm, plus_version, sparse_grad, seed,
                         kernels, **base_kwargs)

    def _compress(self, prunable):
        self.last_pattern = self.patterns[self.draw(len(self.patterns))]
        masks = nm_masks(prunable, *self.last_pattern,
                         kernels=False if self.kernels is False else None)
        for p, mask in zip(prunable, masks):
            if mask is not None:
                p.mul_(mask.view(torch.uint8))  # uint8 view: the fast float*int kernel
        return masks

    def _perturb_and_compress_fused(self, moved, perturbation, masks):
        from ..kernels.triton_step import nm_compress, perturb
        self.last_pattern = n, m = self.patterns[self.draw(len(self.patterns))]
        perturb(moved, perturbation)
        masks = [mask if mask is not None and nm_groupable(p, m) else None
                 for p, mask in zip(moved, masks)]
        grouped = [(p, mask) for p, mask in zip(moved, masks) if mask is not None]
        if grouped:
            nm_compress([p for p, _ in grouped], [mask for _, mask in grouped], n, m)
        return masks
