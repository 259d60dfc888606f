"""One-shot pruning of a model: global, uniform and N:M, in place, with an exact sparsity report."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .masks import check_nm, check_sparsity, magnitude_masks, nm_masks, prunable_weights


@dataclass
class LayerSparsity:
    name: str
    numel: int
    zeros: int
    pruned: bool  # whether the method pruned this layer (False: left dense)

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


@dataclass
class SparsityReport:
    """Zeros counted in the weights after pruning.

    `pruned_sparsity`: over the layers the method prunes (exactly the target for every method);
    `prunable_sparsity`: over all Conv and Linear weights; `model_sparsity`: over all parameters.
    """
    method: str
    target: float
    layers: list[LayerSparsity]
    model_numel: int
    model_zeros: int
    pattern: str | None = None
    dense_layers: list[str] = field(default_factory=list)

    def _ratio(self, layers) -> float:
        numel = sum(layer.numel for layer in layers)
        return sum(layer.zeros for layer in layers) / numel if numel else 0.0

    @property
    def pruned_sparsity(self) -> float:
        return self._ratio([layer for layer in self.layers if layer.pruned])

    @property
    def prunable_sparsity(self) -> float:
        return self._ratio(self.layers)

    @property
    def model_sparsity(self) -> float:
        return self.model_zeros / self.model_numel if self.model_numel else 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(pruned_sparsity=self.pruned_sparsity, prunable_sparsity=self.prunable_sparsity,
                    model_sparsity=self.model_sparsity)
        for layer in data["layers"]:
            layer["sparsity"] = layer["zeros"] / layer["numel"] if layer["numel"] else 0.0
        return data


def uniform_targets(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Prunable weights for uniform pruning: all but the first conv and the last Linear layer."""
    weights = prunable_weights(model)
    first_conv = next((m for _, m, _ in weights if isinstance(m, nn.modules.conv._ConvNd)), None)
    last_linear = next((m for _, m, _ in reversed(weights) if isinstance(m, nn.Linear)), None)
    return [(name, p) for name, m, p in weights if m is not first_conv and m is not last_linear]


def sparsity_report(model: nn.Module, pruned_names, method: str, target: float,
                    pattern: str | None = None, dense_layers=()) -> SparsityReport:
    pruned_names = set(pruned_names)
    with torch.no_grad():
        layers = [LayerSparsity(name, p.numel(), int((p == 0).sum()), name in pruned_names)
                  for name, _, p in prunable_weights(model)]
        params = list(model.parameters())
        model_zeros = sum(int((p == 0).sum()) for p in params)
    return SparsityReport(method, target, layers, sum(p.numel() for p in params), model_zeros,
                          pattern, list(dense_layers))


@torch.no_grad()
def prune_model(model: nn.Module, method: str, sparsity: float | None = None,
                nm: tuple[int, int] | None = None) -> tuple[dict[str, torch.Tensor], SparsityReport]:
    """Prune `model` in place. Returns ({weight name: bool keep-mask}, report).

    method='global': one magnitude threshold over all Conv and Linear weights;
    method='uniform': `sparsity` in every Conv/Linear layer except the first conv and last Linear;
    method='nm': N:M (nm=(N, M)) in every Conv/Linear weight that splits into groups of M.
    """
    if method in ("global", "uniform"):
        target = check_sparsity(sparsity)
        named = ([(n, p) for n, _, p in prunable_weights(model)] if method == "global"
                 else uniform_targets(model))
        masks = magnitude_masks([p for _, p in named], target, method)
        pattern = None
    elif method == "nm":
        if nm is None:
            raise ValueError("method='nm' needs nm=(N, M)")
        n, m = check_nm(*nm)
        named = [(name, p) for name, _, p in prunable_weights(model)]
        masks = nm_masks([p for _, p in named], n, m)
        pattern, target = f"{n}:{m}", 1.0 - n / m
    else:
        raise ValueError(f"method={method!r}: must be 'global', 'uniform' or 'nm'")
    kept = {name: (p, mask) for (name, p), mask in zip(named, masks) if mask is not None}
    dense = [name for name, _, _ in prunable_weights(model) if name not in kept]
    for p, mask in kept.values():
        p.masked_fill_(~mask, 0.0)
    report = sparsity_report(model, kept, method, target, pattern, dense)
    return {name: mask for name, (_, mask) in kept.items()}, report


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned weights again (e.g. after loading), by weight name."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].masked_fill_(~mask.to(params[name].device), 0.0)
