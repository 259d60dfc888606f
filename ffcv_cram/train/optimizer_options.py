"""The trainer's optimizer settings as one frozen value, checked once where it is made.

`make_optimizer` takes it whole; the trainer builds it once from its `training`, `cram` and
`batch_plan` sections (`from_config`). The optimizers check their own arguments again (their
constructors are the public API); what is checked here is what only the combination of method
and options can get wrong.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..choices import CRAM_METHODS, METHODS
from ..cuda_graph_rules import WHY, cuda_graph_conflict


@dataclass(frozen=True, kw_only=True)
class OptimizerOptions:
    """method: sgd | sam | cram (TopkCrAM) | cram_nm (NMTopkCrAM), over a base SGD.

    `interval`, `reuse`, `second_pass_fraction`, `start_step`, `ramp_steps`: CrAM's cost options;
    `cuda_graph`: capture CrAM's optimizer side in CUDA graphs (`optim.graphs`); these apply to
    cram and cram_nm only."""

    method: str
    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool = False
    rho: float = 0.05
    sparsities: tuple = (0.5, 0.7, 0.9)
    patterns: tuple = ((2, 4), (4, 8))
    plus_version: bool = True
    sparse_grad: bool = True
    scope: str = "global"
    grad_norm: bool = False
    seed: int = 0
    interval: int = 1
    reuse: bool = False
    second_pass_fraction: float = 1.0
    cuda_graph: bool = False
    start_step: int = 0
    ramp_steps: int = 0

    def __post_init__(self):
        for name in ("sparsities", "patterns"):  # a config's lists as tuples: frozen all through
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}: must be one of {', '.join(METHODS)}")
        if self.method not in CRAM_METHODS and (
                self.interval != 1 or self.reuse or self.second_pass_fraction != 1
                or self.start_step or self.ramp_steps):
            raise ValueError(f"interval, reuse, second_pass_fraction, start_step and ramp_steps "
                             f"apply to cram and cram_nm, not {self.method}")
        conflict = self.cuda_graph and cuda_graph_conflict(self.method, reuse=self.reuse,
                                                           grad_norm=self.grad_norm)
        if conflict:
            name = {"method": f"method={self.method}", "reuse": "reuse=True",
                    "grad_norm": "grad_norm=True"}[conflict]
            raise ValueError(f"cuda_graph=True does not take {name}: it {WHY[conflict]}")

    @classmethod
    def from_config(cls, cfg: dict, start_step: int = 0,
                    ramp_steps: int = 0) -> "OptimizerOptions":
        """From the trainer's configuration (its sections `training`, `cram` and `batch_plan`);
        `start_step`, `ramp_steps`: CrAM's schedule in steps (the trainer counts them)."""
        t, c = cfg["training"], cfg["cram"]
        return cls(method=t["optimizer"], lr=cfg["batch_plan"]["lr"], momentum=t["momentum"],
                   weight_decay=t["weight_decay"], nesterov=t["nesterov"], rho=c["rho"],
                   sparsities=c["sparsities"], patterns=c["patterns"],
                   plus_version=c["plus_version"], sparse_grad=c["sparse_grad"],
                   scope=c["scope"], grad_norm=c["grad_norm"], seed=c["seed"],
                   interval=c["interval"], reuse=c["reuse"],
                   second_pass_fraction=c["second_pass_fraction"],
                   cuda_graph=t.get("cuda_graph", False), start_step=start_step,
                   ramp_steps=ramp_steps)

    def cram_options(self) -> dict:
        """The keywords TopkCrAM and NMTopkCrAM share (beyond the base SGD's)."""
        return dict(rho=self.rho, grad_norm=self.grad_norm, plus_version=self.plus_version,
                    sparse_grad=self.sparse_grad, seed=self.seed, cuda_graph=self.cuda_graph,
                    interval=self.interval, reuse=self.reuse,
                    second_pass_fraction=self.second_pass_fraction,
                    start_step=self.start_step, ramp_steps=self.ramp_steps)

    def sgd_options(self) -> dict:
        return dict(lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                    nesterov=self.nesterov)
