"""What CUDA graphs of CrAM's optimizer side cannot take, in one place. The optimizer
(`optim.graphs`), its options (`train.optimizer_options`) and the trainer's command line ask here
and name the conflicting setting each in their own words. Imports nothing: the command line asks
before torch is loaded."""
from __future__ import annotations

from .choices import CRAM_METHODS

WHY = {  # setting -> why the graphs cannot take it (completes "it ...")
    "method": "captures CrAM's optimizer side only (cram, cram_nm)",
    "kernels": "captures the fused kernels, which kernels=False turns off",
    "reuse": "cannot capture the reused term (torch ops keep it)",
    "grad_norm": "cannot capture the gradient norm (it reads the gradients directly)",
    "fused_base": "needs the base optimizer's fused form, e.g. torch.optim.SGD with fused=True",
}


def cuda_graph_conflict(method: str = "cram", kernels: bool = True, reuse: bool = False,
                        grad_norm: bool = False, fused_base: bool = True) -> str | None:
    """The first setting (a key of WHY) CUDA graphs cannot take; None: they take them all."""
    conflicts = {"method": method not in CRAM_METHODS, "kernels": not kernels, "reuse": reuse,
                 "grad_norm": grad_norm, "fused_base": not fused_base}
    return next((setting for setting, conflicting in conflicts.items() if conflicting), None)
