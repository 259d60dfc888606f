"""The fused (Triton) path of a CrAM step, owned by one `TopkCrAM` / `NMTopkCrAM`.

`FusedStep` keeps what that path needs between steps: the kernels' `StepPlan` (rebuilt only when
the moved parameters, their places or rho change), the gradient addresses last found fit (so a
step costs one look at them, not a full check), the CUDA graphs (`cuda_graph=True`, see
`optim.graphs`) with the device learning rates their base step reads, and whether the torch
fallback has been reported. The optimizer decides what a step computes; this object decides how
its launches run (eagerly or through a graph) and is the only one that touches the plan.
"""
from __future__ import annotations

import functools
import warnings

import torch

from .graphs import StepGraphs

_BAKED = ("momentum", "weight_decay", "dampening", "nesterov", "maximize")  # in a captured step


class FusedStep:
    def __init__(self, optimizer, cuda_graph: bool = False):
        self.optimizer = optimizer
        self.plan = None  # the kernels' StepPlan
        self.grad_addresses = None  # of this step's first-pass gradients
        self.graphs = StepGraphs(self) if cuda_graph else None
        self._fallback_reported = False
        self._lr: list[torch.Tensor] = []  # device learning rate per group (with graphs)
        self._lr_values: list = []

    # -- whether it applies, and the plan ------------------------------------------------------
    def applies(self, moved) -> bool:
        """Whether the fused step takes these parameters and their gradients: checked in full
        when the plan or the gradients' addresses change, else known (the host time of a step)."""
        optimizer = self.optimizer
        if optimizer.kernels is False:
            return False
        self.grad_addresses = tuple(p.grad.data_ptr() for p in moved)
        plan = self.plan
        if plan is not None and plan.gradients_checked(self.grad_addresses) and plan.matches(moved):
            return True
        reason = fused_step_misfit(moved, explicit=optimizer.kernels is True)
        if reason is None:
            if plan is not None:
                plan.mark_gradients_checked(self.grad_addresses)
            return True
        if optimizer.kernels is True:
            raise RuntimeError(
                f"{type(optimizer).__name__}(kernels=True): the fused step cannot run: {reason}. "
                "It needs dense float32 parameters and gradients with at most 4 dims on one CUDA "
                "device (on the CPU: TRITON_INTERPRET=1) and FFCV_CRAM_KERNELS not 0; pass "
                "kernels=None to fall back")
        self.report_fallback(moved[0].device, reason)
        return False

    def plan_for(self, groups, moved):
        """The plan of this step (rebuilt only when the moved parameters, their places or rho
        change), pointed at the first-pass gradients (`applies` looked at them just now)."""
        from ..kernels.triton_step import StepPlan
        optimizer = self.optimizer
        rhos = [group["rho"] for group, params in groups for _ in params]
        plan = self.plan
        if plan is None or not plan.describes(moved, rhos):
            masks = [optimizer.buffer(p, "mask", torch.bool) if optimizer._compresses(p) else None
                     for p in moved]
            plan = self.plan = StepPlan(
                moved, [optimizer.buffer(p, "w") for p in moved],
                [optimizer.buffer(p, "g") for p in moved] if optimizer._saves_grad() else None,
                masks, rhos, optimizer._selection_groups(masks))
            plan.mark_gradients_checked(self.grad_addresses)
        plan.use_gradients([p.grad for p in moved], addresses=self.grad_addresses)
        return plan

    def report_fallback(self, device, reason: str) -> None:
        """Say once per optimizer why CUDA parameters take the torch path, which waits for the
        host several times per step (elsewhere the torch path is the expected one)."""
        if self._fallback_reported or not _fallback_matters(device):
            return
        self._fallback_reported = True
        warnings.warn(f"{type(self.optimizer).__name__}: the fused Triton step does not apply "
                      f"({reason}); the torch path runs instead, with several host "
                      "synchronisations per step", RuntimeWarning, stacklevel=4)

    # -- the launches --------------------------------------------------------------------------
    def launch(self, key, run, *args) -> None:
        """run(*args): launches of the plan, eagerly or through the graph captured for `key`."""
        if self.graphs is None:
            run(*args)
            return
        self._sync_lr()  # (before any capture: a captured step reads the device values)
        self.graphs.run(key, self.plan, functools.partial(run, *args))

    def finish(self, moved, sparse: bool) -> None:
        """The eager second half: the finish over the second-pass gradients (in place)."""
        self.plan.use_gradients([p.grad for p in moved], second=True)
        self.plan.finish(sparse)

    def finish_and_step(self, moved, sparse: bool, key) -> None:
        """The second half under CUDA graphs: the finish writes d into the plan's own buffers,
        which the (captured) base step reads; `.grad` then holds d, as after an eager step."""
        optimizer, plan = self.optimizer, self.plan
        # held until the launches ran: a capture runs the `p.grad = d` of the base step before
        # the replay that reads these gradients (through the plan's table)
        grads = [p.grad for p in moved]
        plan.use_gradients(grads, second=True)
        buffers = plan.d_buffers(lambda: [optimizer.buffer(p, "d") for p in moved])
        self.launch(key, self._finish_into_d_and_step, moved, buffers, sparse)
        for p, d in zip(moved, buffers):  # a replay leaves .grad as an eager step does: d
            if p.grad is not d:
                p.grad = d

    def _finish_into_d_and_step(self, moved, buffers, sparse: bool) -> None:
        self.plan.finish(sparse, into_d=True)
        for p, d in zip(moved, buffers):
            p.grad = d
        self._device_lr_step()

    # -- the base optimizer's step -------------------------------------------------------------
    def base_step(self) -> None:
        """The base optimizer's step; with graphs on the device learning rates, in eager steps
        too (the same rounding as a replay)."""
        if self.graphs is None:
            self.optimizer.base_optimizer.step()
            return
        self._sync_lr()
        self._device_lr_step()

    def _sync_lr(self) -> None:
        """Copy each group's learning rate into its device tensor when it changed."""
        groups = self.optimizer.param_groups
        if len(self._lr) != len(groups):
            device = next(p.device for g in groups for p in g["params"])
            self._lr = [torch.zeros((), dtype=torch.float32, device=device) for _ in groups]
            self._lr_values = [None] * len(groups)
        for i, group in enumerate(groups):
            value = group["lr"]
            if isinstance(value, torch.Tensor):
                value = float(value)  # (a tensor learning rate: read once per change)
            if value != self._lr_values[i]:
                self._lr[i].fill_(value)
                self._lr_values[i] = value

    def _device_lr_step(self) -> None:
        """The base optimizer's step reading the device learning rates (the fused SGD takes a
        tensor lr without reading it back); the groups' own values are put back after."""
        groups = self.optimizer.param_groups
        saved = [group["lr"] for group in groups]
        try:
            for group, lr in zip(groups, self._lr):
                group["lr"] = lr
            self.optimizer.base_optimizer.step()
        finally:
            for group, value in zip(groups, saved):
                group["lr"] = value

    # -- what the graphs ask -------------------------------------------------------------------
    def count_full_step(self) -> None:
        if self.graphs is not None:
            self.graphs.count_full_step()

    def invalidate_graphs(self) -> None:
        """New momentum buffers (a loaded state_dict): captured steps would miss them."""
        if self.graphs is not None:
            self.graphs.invalidate()

    def baked_settings(self) -> tuple:
        """The base optimizer's settings a captured step bakes in, per group."""
        return tuple(tuple(group.get(name) for name in _BAKED)
                     for group in self.optimizer.param_groups)

    def momentum_missing(self, params) -> bool:
        """Whether a parameter lacks its momentum buffer (a loaded state without them): the
        fused SGD would then bake its first step (buf = grad) into the graph for good."""
        moved = {id(p) for p in params}
        state = self.optimizer.base_optimizer.state
        return any(group.get("momentum") and id(p) in moved
                   and state.get(p, {}).get("momentum_buffer") is None
                   for group in self.optimizer.param_groups for p in group["params"])


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
