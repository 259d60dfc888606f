"""How a selection groups tensors and how many weights each group prunes.

Pure arithmetic on shapes, below both the mask library (`sparsity.masks`) and its kernels
(`kernels`), which both need it: magnitude selection's groups and prune counts, and whether a
tensor splits into N:M groups of M.
"""
from __future__ import annotations

import math


def prune_count(numel: int, sparsity: float) -> int:
    """How many of `numel` weights a sparsity prunes: round(sparsity * numel), halves rounded up."""
    return min(numel, int(math.floor(sparsity * numel + 0.5)))


def selection_groups(tensors, sparsity: float, scope: str) -> tuple[list[int], list[int]]:
    """(selection group of each tensor, prune count of each group) for a scope."""
    if scope == "uniform":
        return list(range(len(tensors))), [prune_count(t.numel(), sparsity) for t in tensors]
    return [0] * len(tensors), [prune_count(sum(t.numel() for t in tensors), sparsity)]


def nm_groupable(t, m: int) -> bool:
    """Whether tensor `t` splits into groups of M (see `sparsity.masks.nm_groups`)."""
    return t.dim() >= 2 and t.numel() % m == 0
