"""CUDA graphs of the fused CrAM step's optimizer side (`TopkCrAM(..., cuda_graph=True)`).

A full CrAM step hands the GPU two bursts of small launches between the model's passes: the
first half (perturb + select: seven launches for a global threshold, three of them returning
at once unless the bracket missed) and the second (finish +
the base optimizer's fused update). Each is captured once, after `warmup` eager full steps, and
then replayed: one graph per drawn sparsity (or N:M pattern) for the first half -- the prune
count is a launch argument -- and one for the second.

What makes the captured launches valid in later steps:
- every buffer they touch is persistent: parameters, saved w and g, masks, the selection's
  workspace (`kernels.triton_step.StepPlan`), the momentum buffers (created by the warm-up);
- the gradients autograd allocates anew each pass are read through device tables of addresses
  that the plan rewrites in place when they move; the base optimizer, which reads `.grad`
  directly, is captured reading the optimizer's own buffers, into which the finish writes d;
- the learning rate is a device tensor per parameter group, refreshed from the group's float
  before each step (one tiny copy), so schedules never force a recapture. It is the float
  rounded to float32, in eager steps too, so a run with graphs equals one without them whenever
  the learning rate is representable in float32, and is otherwise within that rounding;
- a change of the plan (other parameters, gradients of another alignment), of the hyper-
  parameters baked into the base optimizer's launch, or a loaded state_dict (new momentum
  buffers) captures anew. The first half is keyed by the sparsity (or pattern) itself, so new
  `sparsities` or `patterns` assigned after a capture get graphs of their own. No capture runs
  while a momentum buffer is missing (a state_dict loaded without them): that step runs eagerly
  and makes them, as the fused SGD's first step would otherwise be baked in for good;
- after every step `.grad` of the moved parameters is the buffer holding d (warm-up, capture and
  replay alike), so a replay leaves the same gradient as an eager step.
The fused base optimizer is required (torch.optim.SGD(fused=True), as `make_optimizer` builds
on CUDA): its foreach form reads a tensor learning rate back to the host.

`StepGraphs` only captures and replays: what it runs, the learning rates and the gradients are
its owner's (`optim.fused.FusedStep`), which it asks through methods.
"""
from __future__ import annotations

import torch

from ..cuda_graph_rules import WHY, cuda_graph_conflict

WARMUP_STEPS = 2  # eager full steps first: kernels compiled, momentum buffers made, allocator warm


class StepGraphs:
    """owner: the `FusedStep` whose launches are captured; it answers `baked_settings()` (the
    base optimizer's settings a capture bakes in) and `momentum_missing(params)`."""

    def __init__(self, owner, warmup: int = WARMUP_STEPS):
        self.owner, self.warmup = owner, warmup
        self.full_steps = 0
        self.graphs: dict = {}
        self.plan = None  # the plan the graphs were captured with (kept alive: ids stay unique)
        self.pool = None

    def ready(self) -> bool:
        return self.full_steps >= self.warmup

    def count_full_step(self) -> None:
        self.full_steps += 1

    def invalidate(self) -> None:
        self.graphs.clear()

    def _key(self, key, plan) -> tuple:
        return (key, id(plan), plan.version, self.owner.baked_settings())

    def run(self, key, plan, launches) -> None:
        """launches() eagerly during the warm-up, else through its graph (captured on first use)."""
        if not self.ready():
            launches()
            return
        if plan is not self.plan:  # a rebuilt plan: the old graphs address its freed tables
            self.graphs.clear()
            self.plan = plan
        full_key = self._key(key, plan)
        graph = self.graphs.get(full_key)
        if graph is None:
            if self.owner.momentum_missing(plan.params):
                launches()  # this eager step makes them; the capture waits for the next one
                return
            graph = self.graphs[full_key] = self._capture(launches)
        graph.replay()

    def _capture(self, launches) -> torch.cuda.CUDAGraph:
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # thread_local: the data loader's thread may keep working on its own stream meanwhile
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            launches()
        return graph


def graph_problem(optimizer) -> str | None:
    """Why `cuda_graph=True` cannot work with this optimizer's settings (None: it can)."""
    conflict = cuda_graph_conflict(kernels=optimizer.kernels is not False, reuse=optimizer.reuse,
                                   grad_norm=optimizer.use_grad_norm,
                                   fused_base=bool(optimizer.base_optimizer.defaults.get("fused")))
    if conflict is None:
        return None
    name = {"kernels": "kernels=False", "reuse": "reuse=True", "grad_norm": "grad_norm=True",
            "fused_base": "a base optimizer without fused=True"}[conflict]
    return f"cuda_graph=True does not take {name}: it {WHY[conflict]}"
