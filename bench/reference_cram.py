"""The reference implementation's approach to a CrAM+ step, re-expressed for side-by-side timing.

Per step it clones every weight and gradient, concatenates |w| of all prunable tensors, finds the
threshold with a fully sorted torch.topk, and multiplies by float32 masks. Same mathematics as
TopkCrAM (up to tie handling), so the two can be timed on the same model.
"""
import numpy as np
import torch


def reference_masks(tensors, sparsity):
    flat = torch.cat([t.abs().view(-1) for t in tensors])  # (breaks on channels_last: .view)
    keep = int(flat.numel() * (1 - sparsity))
    threshold = torch.topk(flat, keep, sorted=True)[0][-1]
    return [(t.abs() >= threshold).float() for t in tensors]


class ReferenceStyleCrAM:
    def __init__(self, params, rho=0.05, sparsities=(0.5, 0.7, 0.9), **sgd_kwargs):
        self.params = [p for p in params]
        self.rho, self.sparsities = rho, sparsities
        self.base = torch.optim.SGD(self.params, **sgd_kwargs)

    def zero_grad(self):
        self.base.zero_grad()

    @torch.no_grad()
    def step(self, closure):
        params = [p for p in self.params if p.grad is not None]
        old_p = [p.data.clone() for p in params]
        old_g = [p.grad.data.clone() for p in params]
        for p in params:
            p.add_(p.grad * self.rho)
        prunable = [p for p in params if p.dim() > 1]
        masks = reference_masks([p.contiguous() for p in prunable], np.random.choice(self.sparsities))
        for p, m in zip(prunable, masks):
            p.mul_(m)
        self.base.zero_grad()
        with torch.enable_grad():
            closure()
        for p, m in zip(prunable, masks):
            p.grad.mul_(m)
        for p, w, g in zip(params, old_p, old_g):
            p.data.copy_(w)
            p.grad.add_(g)
        self.base.step()
