"""What SAM and CrAM share: move the weights, take a second gradient there, come back, step.

The wrapper owns no param_groups of its own: the base optimizer is built on the wrapper's groups
and the wrapper then adopts the base's list, so LR schedulers, GradScaler and user code see a single
set of groups. Per-step scratch (saved weights, saved gradients, masks) lives in preallocated
buffers outside `state`, so it is reused every step and never serialised.
"""
from __future__ import annotations

import torch
from torch.optim import Optimizer

STATE_FORMAT = "ffcv_cram.two_pass/1"
_SCRATCH_KEYS = ("old_p", "old_g", "mask", "e_w")  # per-step tensors the reference kept in `state`


class TwoPassOptimizer(Optimizer):
    """Base class: subclasses implement `_perturb` (first half) and `_finish` (second half)."""

    def __init__(self, params, base_optimizer, rho: float, **base_kwargs):
        if isinstance(base_optimizer, Optimizer) or not callable(base_optimizer):
            raise TypeError("base_optimizer: pass the optimizer class (e.g. torch.optim.SGD), "
                            "not an instance; its arguments go to this constructor")
        if not isinstance(rho, (int, float)) or rho < 0:
            raise ValueError(f"rho={rho!r}: must be a number >= 0")
        super().__init__(params, dict(rho=float(rho), **base_kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self._scratch: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        self._moved: list[torch.Tensor] | None = None
        self.generator: torch.Generator | None = None  # set by subclasses that draw per step
        self._generator_before = None

    # -- the two halves ------------------------------------------------------------------------
    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Save w, move every parameter with a gradient to the point where the second pass runs."""
        if self._moved is not None:
            raise RuntimeError("first_step() called twice without second_step() in between")
        self._generator_before = self.generator.get_state() if self.generator is not None else None
        groups = [(g, [p for p in g["params"] if p.grad is not None]) for g in self.param_groups]
        moved = [p for _, params in groups for p in params]
        self._perturb(groups, moved)
        self._moved = moved
        if zero_grad:
            # set to None (not zeroed in place): autograd then adopts the second pass's gradient
            # buffers instead of accumulating into the old ones, measurably faster on the CPU
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Come back to the saved w and take the base optimizer's step with the combined gradient."""
        if self._moved is None:
            raise RuntimeError("second_step() called before first_step()")
        moved, self._moved = self._moved, None
        self._finish_and_step(moved)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def step(self, closure=None):
        """The whole update. `closure` must run forward and backward (at the moved point)."""
        if closure is None:
            raise ValueError(f"{type(self).__name__}.step() needs a closure that runs forward and "
                             "backward; or call first_step() and second_step() yourself")
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            closure()
        self.second_step()

    def discard_step(self) -> None:
        """Abandon a started step (e.g. fp16 overflow): w restored exactly, no optimizer state
        changed (the sparsity draw is rewound too)."""
        if self._moved is None:
            return
        if self._moved:  # (foreach ops refuse empty lists: no gradient, nothing moved)
            with torch.no_grad():
                torch._foreach_copy_(self._moved, [self.buffer(p, "w") for p in self._moved])
        if self._generator_before is not None:
            self.generator.set_state(self._generator_before)
        self._moved = None

    def _perturb(self, groups, moved) -> None:
        """Save w (`save_weights`) and move the parameters."""
        raise NotImplementedError

    def _finish(self, moved) -> None:
        raise NotImplementedError

    def _finish_and_step(self, moved) -> None:
        """The second half: `_finish`, then the base optimizer's step."""
        self._finish(moved)
        self._base_step()

    def _base_step(self) -> None:
        self.base_optimizer.step()

    # -- helpers for subclasses ----------------------------------------------------------------
    def buffer(self, p: torch.Tensor, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A persistent scratch tensor shaped and laid out like p."""
        slot = self._scratch.setdefault(p, {})
        buf = slot.get(name)
        dtype = dtype or p.dtype
        if (buf is None or buf.shape != p.shape or buf.dtype != dtype or buf.device != p.device
                or buf.stride() != p.stride()):
            buf = slot[name] = torch.empty_like(p, dtype=dtype)
        return buf

    def save_weights(self, moved) -> None:
        if moved:  # foreach ops refuse empty lists (a step where no parameter has a gradient)
            torch._foreach_copy_([self.buffer(p, "w") for p in moved], moved)

    def restore_and_add_saved_grad(self, moved, plus_version: bool) -> None:
        """w <- saved w; with `plus_version`, grad <- grad + saved first-pass gradient."""
        if not moved:
            return
        torch._foreach_copy_(moved, [self.buffer(p, "w") for p in moved])
        if not plus_version:
            return
        for p in moved:
            saved = self.buffer(p, "g")
            if p.grad is None:
                p.grad = saved.clone()
            else:
                p.grad.add_(saved)

    def grad_norm(self, params) -> torch.Tensor:
        """‖g‖₂ over all given parameters (one device; no host synchronisation)."""
        device = params[0].grad.device
        norms = torch._foreach_norm([p.grad for p in params])
        return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]))

    def draw(self, n: int) -> int:
        """Index of this step's option; the same on every rank (seeded generator, saved on resume)."""
        return int(torch.randint(n, (1,), generator=self.generator))

    # -- serialisation -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"format": STATE_FORMAT, "base_optimizer": self.base_optimizer.state_dict()}
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Our format; also a bare optimizer state_dict (the reference's: scratch keys dropped)."""
        if state_dict.get("format") == STATE_FORMAT:
            base = state_dict["base_optimizer"]
        elif "state" in state_dict and "param_groups" in state_dict:
            base = {"param_groups": state_dict["param_groups"],
                    "state": {k: {n: v for n, v in s.items() if n not in _SCRATCH_KEYS}
                              for k, s in state_dict["state"].items()}}
        else:
            raise ValueError("optimizer state_dict: unknown format (expected the output of "
                             f"{type(self).__name__}.state_dict())")
        self.base_optimizer.load_state_dict(base)
        self.param_groups = self.base_optimizer.param_groups
        if self.generator is not None and "generator" in state_dict:
            self.generator.set_state(state_dict["generator"])
        self._moved = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base={self.base_optimizer!r})"
