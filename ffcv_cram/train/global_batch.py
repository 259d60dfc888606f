"""The global batch is a recipe's unit: the per-process batch and the effective learning rate
follow from it and the number of processes, never silently.

A recipe states the global batch it trains with (`training.global_batch_size`) and the global batch
its learning rate belongs to (`lr.batch_size`, 0: the same). When the two differ, the user says how
the learning rate follows (`lr.scaling`: linear, sqrt or none); otherwise the run is refused with
the numbers. Gradient accumulation is not implemented (CrAM's ascent needs the whole batch's
gradient before its second pass), so a per-process batch above `training.max_batch_per_process`
is refused rather than split.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..config import UsageError

LR_SCALINGS = ("", "linear", "sqrt", "none")


@dataclass(frozen=True)
class BatchPlan:
    world_size: int
    batch_size_per_process: int
    global_batch_size: int
    lr: float  # the effective peak learning rate, after scaling

    def to_dict(self) -> dict:
        return asdict(self)


def scaled_lr(lr: float, batch: int, lr_batch: int, scaling: str) -> float:
    ratio = batch / lr_batch
    return {"linear": lr * ratio, "sqrt": lr * math.sqrt(ratio), "none": lr}[scaling]


def plan_batch(global_batch: int, lr: float, lr_batch: int, scaling: str, world_size: int,
               max_per_process: int = 0) -> BatchPlan:
    """The run's batch plan; raises UsageError (one line, with the numbers) where it cannot run."""
    if global_batch % world_size:
        lower = global_batch - global_batch % world_size
        nearest = " or ".join(str(b) for b in (lower, lower + world_size) if b)
        raise UsageError(f"--training.global_batch_size={global_batch}: does not divide over "
                         f"{world_size} processes; use a multiple of {world_size} (e.g. {nearest}, "
                         "with --lr.scaling) or another process count")
    per_process = global_batch // world_size
    if max_per_process and per_process > max_per_process:
        needed = -(-global_batch // max_per_process)
        raise UsageError(f"--training.global_batch_size={global_batch} over {world_size} processes "
                         f"is {per_process} per process, above --training.max_batch_per_process="
                         f"{max_per_process}; gradient accumulation is not implemented: run on at "
                         f"least {needed} processes, raise the limit if memory allows, or lower the "
                         "global batch with --lr.scaling")
    return BatchPlan(world_size, per_process, global_batch,
                     effective_lr(global_batch, lr, lr_batch, scaling))


def effective_lr(global_batch: int, lr: float, lr_batch: int, scaling: str) -> float:
    """`lr` (for a global batch of `lr_batch`, 0: this one) at `global_batch`; raises UsageError
    when they differ and `scaling` does not say how the lr follows."""
    lr_batch = lr_batch or global_batch
    if global_batch == lr_batch:
        return lr
    if not scaling:
        options = " | ".join(f"{s} (lr {scaled_lr(lr, global_batch, lr_batch, s):.4g})"
                             for s in LR_SCALINGS if s)
        raise UsageError(f"--training.global_batch_size={global_batch} differs from the global "
                         f"batch {lr_batch} that --lr.lr={lr:g} belongs to (--lr.batch_size); say "
                         f"how the learning rate follows: --lr.scaling={options}")
    return scaled_lr(lr, global_batch, lr_batch, scaling)


def plan_from_config(cfg: dict, world_size: int) -> BatchPlan:
    t, lr = cfg["training"], cfg["lr"]
    return plan_batch(t["global_batch_size"], lr["lr"], lr["batch_size"], lr["scaling"],
                      world_size, t["max_batch_per_process"])


def describe(plan: dict, cfg: dict) -> str:
    """One line for the start of a run: what trains with what."""
    lr = cfg["lr"]
    line = (f"batch: {plan['global_batch_size']} global = {plan['batch_size_per_process']} per "
            f"process x {plan['world_size']} processes; lr {plan['lr']:.6g}")
    lr_batch = lr["batch_size"] or plan["global_batch_size"]
    if lr_batch != plan["global_batch_size"]:
        line += (f" (--lr.lr={lr['lr']:g} belongs to a global batch of {lr_batch}; "
                 f"{lr['scaling']} scaling)")
    return line


def saved_plan(saved: dict, world_size: int) -> dict | None:
    """The batch plan a saved run configuration trained with. Runs written before the global batch
    existed hold `training.batch_size` per process and used `lr.lr` as is; they are read as that
    batch times the processes that resume them (the run's count was not recorded). None for a
    configuration that states no batch at all (a fragment)."""
    if "batch_plan" in saved:
        return saved["batch_plan"]
    if "batch_size" not in saved.get("training", {}):
        return None
    per_process = saved["training"]["batch_size"]
    return BatchPlan(world_size, per_process, per_process * world_size,
                     saved["lr"]["lr"]).to_dict()
