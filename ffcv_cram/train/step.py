"""One training step for sgd, sam, cram (TopkCrAM) and cram_nm (NMTopkCrAM).

AMP: 'none', 'bf16' (autocast) or 'fp16' (autocast + torch.amp.GradScaler). BatchNorm running
statistics are frozen during the second pass. Under DDP both passes all-reduce their gradients,
so the perturbation and the masks are the same on every rank.

fp16 with two passes -- the question SAM users keep asking: a non-finite gradient in EITHER pass
skips the whole step. The first-pass gradient is unscaled by hand on the device (it sets the
perturbation) and its overflow flag is kept there; the second pass goes through `scaler.unscale_`,
and the first pass's flag is added to the scaler's, so `update()` backs the scale off for either.
If either overflowed, `discard_step()` restores the weights exactly (and rewinds the sparsity
draw) and the base optimizer never steps, so momentum and every other state stay untouched.

CrAM's cost options (`interval`, `reuse`, `second_pass_fraction`, `start_step`, `ramp_steps`,
see `optim.cram`): a step the
optimizer's schedule makes one-pass runs exactly like an SGD step (with fp16: GradScaler.step,
which skips it on overflow; the optimizer's step counter then does not advance, which is how
the skip is seen). The second pass of a full step runs on the first ceil(f * B) samples.

Host synchronisations on a GPU: none in a bf16 or fp32 step of any method (SAM and CrAM with
the fused kernels read nothing back; the torch fallback of CrAM's top-k selection, used where the
fused kernels do not apply, reads its histograms on the host); one in an fp16 two-pass step (the
overflow decision, see `_two_pass_fp16`); sgd with fp16 keeps GradScaler.step's own check.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ..choices import AMP_MODES, METHODS
from ..optim import NMTopkCrAM, SAM, TopkCrAM, disable_running_stats, enable_running_stats
from .optimizer_options import OptimizerOptions



@dataclass
class StepOutput:
    loss: torch.Tensor      # first-pass loss (detached, on the device)
    correct: torch.Tensor   # top-1 hits of the first pass (on the device)
    skipped: bool = False   # fp16 overflow: no update was made


def _grads(optimizer):
    return [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]


class TrainStep:
    def __init__(self, model: nn.Module, optimizer, method: str, amp: str = "none",
                 label_smoothing: float = 0.0, device: torch.device | str = "cpu"):
        if method not in METHODS:
            raise ValueError(f"method={method!r}: must be one of {', '.join(METHODS)}")
        if amp not in AMP_MODES:
            raise ValueError(f"amp={amp!r}: must be one of {', '.join(AMP_MODES)}")
        two_pass = isinstance(optimizer, (SAM, TopkCrAM, NMTopkCrAM))
        if two_pass != (method != "sgd"):
            raise ValueError(f"method={method!r} does not match optimizer {type(optimizer).__name__}")
        self.model, self.optimizer, self.method = model, optimizer, method
        self.device = torch.device(device)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.scaler = torch.amp.GradScaler(self.device.type) if amp == "fp16" else None
        # set where `model` is compiled with a CUDA-graph mode (models.compiled.replays_graphs)
        self.replays_cuda_graphs = False

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _loss(self, x, y):
        if self.replays_cuda_graphs:
            # each pass starts a new round of replays: the last pass's graph outputs (its logits,
            # already read) may be overwritten; the loss is computed outside the graphs, and the
            # first pass's gradient is copied by first_step before the second pass runs
            torch.compiler.cudagraph_mark_step_begin()
        with self.autocast():
            logits = self.model(x)
            return logits, self.criterion(logits, y)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        self.optimizer.zero_grad()
        logits, loss = self._loss(x, y)
        out = StepOutput(loss.detach(), (logits.detach().argmax(1) == y).sum())
        if self.method == "sgd":
            self._sgd(loss)
        elif not getattr(self.optimizer, "full_step_due", True):
            out.skipped = self._one_pass(loss)
        elif self.scaler is None:
            self._two_pass(x, y, loss)
        else:
            out.skipped = self._two_pass_fp16(x, y, loss)
        return out

    def _sgd(self, loss):
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()

    def _one_pass(self, loss) -> bool:
        """A one-pass step of a CrAM schedule; True if fp16 overflow skipped it."""
        before = self.optimizer.cram_steps
        self._sgd(loss)
        return self.optimizer.cram_steps == before

    def _second_backward(self, x, y, scale: bool):
        size = getattr(self.optimizer, "second_pass_size", None)
        if size is not None and (k := size(len(y))) < len(y):
            x, y = x[:k], y[:k]  # the batch's first ceil(f * B) samples (a view: no copy)
        disable_running_stats(self.model)
        try:
            _, loss = self._loss(x, y)
            (self.scaler.scale(loss) if scale else loss).backward()
        finally:
            enable_running_stats(self.model)

    def _two_pass(self, x, y, loss):
        loss.backward()
        self.optimizer.first_step(zero_grad=True)
        self._second_backward(x, y, scale=False)
        self.optimizer.second_step()

    def _two_pass_fp16(self, x, y, loss) -> bool:
        scaler, opt = self.scaler, self.optimizer
        scaler.scale(loss).backward()
        # the first-pass gradient is unscaled by hand, on the device: the scale is the scaler's
        # device tensor (get_scale() would read it on the host), the overflow flag stays there
        first_overflow = torch.zeros((), device=self.device)
        inv_scale = scaler._scale.double().reciprocal().float()
        torch._amp_foreach_non_finite_check_and_unscale_(_grads(opt), first_overflow, inv_scale)
        # No check here: after an overflow the perturbation is not finite, the second pass runs
        # on it for nothing, and the step is thrown away below. Overflows are rare; waiting for
        # the device before every perturbation would cost every step.
        opt.first_step(zero_grad=True)
        self._second_backward(x, y, scale=True)
        scaler.unscale_(opt)
        found = list(scaler._found_inf_per_device(opt).values())
        found[0].add_(first_overflow.to(found[0].device))  # so that update() backs off for either
        overflow = torch.stack([f.to(self.device) for f in found]).sum()
        # The one host synchronisation of an fp16 two-pass step, and it cannot go: whether the
        # base optimizer steps (an unconditional step would change momentum) and whether the
        # sparsity draw is rewound (its generator lives on the host and must be right before the
        # next step draws) are decisions the host makes, so it must know about an overflow now.
        if bool(overflow):
            opt.discard_step()
            opt.zero_grad()
            scaler.update()
            return True
        opt.second_step()
        scaler.update()
        return False


def make_optimizer(params, options: OptimizerOptions, dense=None):
    """The base SGD (momentum, weight decay), wrapped per `options.method`. On CUDA the SGD update
    is torch's fused kernel: one launch instead of several foreach ones (on an H200, ResNet-50's
    foreach update took 2.2 ms, 27 % of the fused CrAM step's optimizer side).
    `dense`: the tensors cram's scope='uniform' leaves dense (None: TopkCrAM's default)."""
    params = list(params)
    sgd = options.sgd_options()
    if _all_on_cuda(params):
        sgd["fused"] = True
    if options.method == "sgd":
        return torch.optim.SGD(params, **sgd)
    if options.method == "sam":
        return SAM(params, torch.optim.SGD, rho=options.rho, **sgd)
    if options.method == "cram":
        return TopkCrAM(params, torch.optim.SGD, sparsities=options.sparsities,
                        scope=options.scope, dense=dense, **options.cram_options(), **sgd)
    return NMTopkCrAM(params, torch.optim.SGD, patterns=options.patterns,
                      **options.cram_options(), **sgd)


def _all_on_cuda(params) -> bool:
    tensors = [p for item in params for p in (item["params"] if isinstance(item, dict) else [item])]
    return bool(tensors) and all(p.is_cuda and p.is_floating_point() for p in tensors)


def parameter_groups(model: nn.Module, weight_decay: float, decay_all: bool = True):
    """One group, or (decay_all=False) no weight decay on tensors of rank <= 1 (BN, biases),
    chosen by tensor rank rather than by parameter names."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_all:
        return [{"params": params, "weight_decay": weight_decay}]
    return [{"params": [p for p in params if p.dim() > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}]
