"""CrAM (Peste et al., ICLR 2023): TopkCrAM and its N:M variant, exactly the step of SPEC §2.

    g   = grad f(w)                           (first pass, BN statistics updated)
    e   = rho * g            (or rho * g / ||g|| with grad_norm=True)
    M   = mask(w + e)        (top-k magnitudes of the prunable tensors: dim > 1)
    g_C = grad f((w + e) * M)                 (second pass, BN statistics frozen)
    d   = g_C * M (sparse_grad)  [+ g (plus_version)]
    w   <- base_optimizer(w, d)
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..sparsity.masks import check_nm, check_sparsity, compress_, nm_masks
from .two_pass import TwoPassOptimizer


class _CompressedTwoPass(TwoPassOptimizer):
    """Shared CrAM machinery; subclasses choose and apply this step's masks in `_compress`."""

    def __init__(self, params, base_optimizer, rho, grad_norm, plus_version, sparse_grad, seed,
                 **base_kwargs):
        super().__init__(params, base_optimizer, rho=rho, **base_kwargs)
        self.use_grad_norm = bool(grad_norm)
        self.plus_version = bool(plus_version)
        self.sparse_grad = bool(sparse_grad)
        self.generator = torch.Generator().manual_seed(int(seed))
        self._step_masks: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _perturb(self, groups, moved):
        if not moved:
            return
        if self.plus_version:
            torch._foreach_copy_([self.buffer(p, "g") for p in moved], [p.grad for p in moved])
        inv_norm = 1.0 / (self.grad_norm(moved) + 1e-12) if self.use_grad_norm else None
        for group, params in groups:
            if not params:
                continue
            grads = [p.grad for p in params]
            if inv_norm is None:
                torch._foreach_add_(params, grads, alpha=group["rho"])
            else:
                torch._foreach_add_(params, torch._foreach_mul(grads, inv_norm * group["rho"]))
        prunable = [p for p in moved if p.dim() > 1]
        self._step_masks = [(p, mask) for p, mask in zip(prunable, self._compress(prunable))
                            if mask is not None]

    def _finish(self, moved):
        if self.sparse_grad:
            for p, mask in self._step_masks:
                if p.grad is not None:
                    p.grad.mul_(mask.view(torch.uint8))
        self._step_masks = []
        self.restore_and_add_saved_grad(moved, self.plus_version)

    def _compress(self, prunable) -> list:
        """Zero the pruned weights in place; return the keep-masks (None: tensor left dense)."""
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
    and compresses to it with one global threshold (scope='global') or per tensor ('uniform';
    the reference's `unif_prune=True`). `last_sparsity` holds the latest draw.
    """

    def __init__(self, params, base_optimizer, rho: float = 0.05,
                 sparsities: Sequence[float] = (0.5, 0.7, 0.9), grad_norm: bool = False,
                 plus_version: bool = True, sparse_grad: bool = True, scope: str = "global",
                 seed: int = 0, unif_prune: bool | None = None, **base_kwargs):
        if unif_prune:  # the reference's spelling of scope='uniform'
            scope = "uniform"
        if scope not in ("global", "uniform"):
            raise ValueError(f"scope={scope!r}: must be 'global' or 'uniform'")
        self.sparsities = _sparsity_list(sparsities)
        self.scope = scope
        self.last_sparsity: float | None = None
        super().__init__(params, base_optimizer, rho, grad_norm, plus_version, sparse_grad, seed,
                         **base_kwargs)

    def _compress(self, prunable):
        self.last_sparsity = self.sparsities[self.draw(len(self.sparsities))]
        out = [self.buffer(p, "mask", torch.bool) for p in prunable]
        return compress_(prunable, self.last_sparsity, self.scope, out=out)


def parse_pattern(pattern) -> tuple[int, int]:
    """(N, M) from a pair or an 'N:M' string."""
    if isinstance(pattern, str):
        try:
            n, m = (int(x) for x in pattern.split(":"))
        except ValueError:
            raise ValueError(f"pattern {pattern!r}: expected 'N:M', e.g. '2:4'") from None
        return check_nm(n, m)
    n, m = pattern
    return check_nm(n, m)


class NMTopkCrAM(_CompressedTwoPass):
    """NMTopkCrAM(params, base_optimizer, rho=0.05, patterns=((2, 4), (4, 8)), ...).

    Each step draws one N:M pattern uniformly; tensors that cannot be split into groups of M stay
    dense for that step. `last_pattern` holds the latest draw.
    """

    def __init__(self, params, base_optimizer, rho: float = 0.05,
                 patterns=((2, 4), (4, 8)), grad_norm: bool = False, plus_version: bool = True,
                 sparse_grad: bool = True, seed: int = 0, **base_kwargs):
        if isinstance(patterns, str) or (len(patterns) == 2 and all(isinstance(x, int) for x in patterns)):
            patterns = (patterns,)
        self.patterns = tuple(parse_pattern(p) for p in patterns)
        if not self.patterns:
            raise ValueError("patterns: must list at least one N:M pattern, e.g. ((2, 4), (4, 8))")
        self.last_pattern: tuple[int, int] | None = None
        super().__init__(params, base_optimizer, rho, grad_norm, plus_version, sparse_grad, seed,
                         **base_kwargs)

    def _compress(self, prunable):
        self.last_pattern = self.patterns[self.draw(len(self.patterns))]
        masks = nm_masks(prunable, *self.last_pattern)
        for p, mask in zip(prunable, masks):
            if mask is not None:
                p.mul_(mask.view(torch.uint8))  # uint8 view: the fast float*int kernel
        return masks
