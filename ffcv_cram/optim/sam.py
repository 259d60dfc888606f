"""SAM (Foret et al., 2021): the normalised two-pass baseline, e = rho * g / ||g||."""
import torch

from .two_pass import TwoPassOptimizer


class SAM(TwoPassOptimizer):
    """SAM(params, base_optimizer, rho=0.05, **base_kwargs); rho may differ per param group."""

    def __init__(self, params, base_optimizer, rho: float = 0.05, **base_kwargs):
        super().__init__(params, base_optimizer, rho=rho, **base_kwargs)

    def _perturb(self, groups, moved):
        self.save_weights(moved)
        if not moved:
            return
        inv_norm = 1.0 / (self.grad_norm(moved) + 1e-12)
        for group, params in groups:
            if params:
                grads = [p.grad for p in params]
                torch._foreach_add_(params, torch._foreach_mul(grads, inv_norm * group["rho"]))

    def _finish(self, moved):
        self.restore_and_add_saved_grad(moved, plus_version=False)
