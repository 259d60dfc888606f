"""Host time of the fused CrAM+ step's optimizer side: what Python costs per step besides launches.

On a GPU the fused step's device work is a handful of launches (triton_step.StepPlan), so the
host's own time per step -- looking up the plan, checking the gradients, building arguments,
the base optimizer's Python -- decides whether the GPU ever waits for it. Measured here on the
CPU with every Triton launch stubbed out (JITFunction.run and, as the kernels are reached through
Triton's interpreter on the CPU, InterpretedFunction.run: no-ops returning None; the launch sites'
argument handling still runs), ResNet-50's parameters (torchvision, channels_last, float32) with
fake gradients assigned to .grad, and the base step (torch.optim.SGD fused=True, momentum) doing
its real ATen work on the CPU (its share is reported: on CUDA it is one launch).

Reported per optimizer: plan-build time (the first first_step/second_step), the steady-state
median of first_step and second_step after a warm-up, with gradients that stay put (as CUDA's
caching allocator usually hands them out) and with gradients at new addresses every pass (the
plan's address tables rewritten, the gradients re-checked); and the gradient-address check alone
against the full check it spares (fused_step_misfit). No GPU needed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # (before triton loads) kernels=True on the CPU

import torch  # noqa: E402
import torchvision  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from ffcv_cram import NMTopkCrAM, TopkCrAM  # noqa: E402
from ffcv_cram.atomic import write_text  # noqa: E402
from ffcv_cram.kernels import triton_bracket, triton_layout  # noqa: E402
from ffcv_cram.optim import graphs  # noqa: E402
from ffcv_cram.optim.fused import fused_step_misfit  # noqa: E402
from ffcv_cram.progress import bar  # noqa: E402

from common import RESULTS, save_result, table  # noqa: E402

SGD = dict(lr=0.1, momentum=0.9, weight_decay=5e-5, fused=True)
CASES = {  # name: (optimizer class, options)
    "TopkCrAM global (CrAM+)": (TopkCrAM, {}),
    "TopkCrAM uniform (CrAM+)": (TopkCrAM, {"scope": "uniform"}),
    "NMTopkCrAM 2:4/4:8 (CrAM+)": (NMTopkCrAM, {}),
    "TopkCrAM global, cuda_graph=True": (TopkCrAM, {"cuda_graph": True}),
}


def stub_launches() -> None:
    """Every Triton launch returns at once (no kernel runs)."""
    def no_launch(self, *args, **kwargs):
        return None
    JITFunction.run = no_launch
    InterpretedFunction.run = no_launch


class _NoGraph:
    """Stands in for a captured CUDA graph (there is no GPU): capture and replay do nothing."""

    def replay(self) -> None:
        pass


def resnet50_params():
    torch.manual_seed(0)
    model = torchvision.models.resnet50().to(memory_format=torch.channels_last)
    return [p for p in model.parameters()]


class Timer:
    """Wraps the base optimizer's step to time its share of second_step."""

    def __init__(self):
        self.seconds = 0.0

    def wrap(self, step):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return step(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        return timed


def run_case(cls, options, params, grad_sets, steps: int, warmup: int, progress) -> dict:
    """Times first_step and second_step of `steps` steps after `warmup` (the first is the plan
    build, from empty caches). grad_sets: gradient buffers handed out in turn, one set per
    backward pass."""
    triton_layout._layouts.clear()  # (layouts, their selection plans and workspaces are cached)
    triton_layout._pointers.clear()
    triton_bracket._workspaces.clear()
    optimizer = cls(params, torch.optim.SGD, kernels=True, **SGD, **options)
    if optimizer._graphs is not None:
        optimizer._graphs._capture = lambda launches: _NoGraph()
    base = Timer()
    optimizer.base_optimizer.step = base.wrap(optimizer.base_optimizer.step)
    turn = [0]

    def backward():  # a fake backward pass: gradients at the next set's addresses
        grads = grad_sets[turn[0] % len(grad_sets)]
        turn[0] += 1
        for p, g in zip(params, grads):
            p.grad = g
    first, second, base_share = [], [], []
    for step in range(warmup + steps):
        backward()
        start = time.perf_counter()
        optimizer.first_step(zero_grad=True)
        middle = time.perf_counter()
        backward()
        base.seconds = 0.0
        optimizer.second_step(zero_grad=True)
        end = time.perf_counter()
        first.append(middle - start)
        second.append(end - middle)
        base_share.append(base.seconds)
        progress.update()
    steady = slice(warmup, None)
    median = lambda values: statistics.median(values[steady])  # noqa: E731
    return {"plan_build_first_step_ms": first[0] * 1e3,
            "plan_build_second_step_ms": second[0] * 1e3,
            "first_step_ms": median(first) * 1e3, "second_step_ms": median(second) * 1e3,
            "second_step_base_optimizer_ms": median(base_share) * 1e3,
            "second_step_without_base_ms": statistics.median(
                s - b for s, b in zip(second[steady], base_share[steady])) * 1e3,
            "first_step_quartiles_ms": quartiles(first[steady]),
            "second_step_quartiles_ms": quartiles(second[steady]),
            "steps": steps, "warmup": warmup}


def quartiles(values) -> list:
    q = statistics.quantiles(values, n=4)
    return [q[0] * 1e3, q[2] * 1e3]


def check_costs(params, grads, repeats: int) -> dict:
    """The per-step gradient-address check alone vs. the full check it spares."""
    optimizer = TopkCrAM(params, torch.optim.SGD, kernels=True, **SGD)
    for p, g in zip(params, grads):
        p.grad = g
    optimizer.first_step()  # builds the plan
    plan = optimizer._plan
    moved = plan.params

    def timed(fn):
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3
    known = tuple(p.grad.data_ptr() for p in moved)
    costs = {
        "gradient addresses (tuple of data_ptr) + compare": timed(
            lambda: tuple(p.grad.data_ptr() for p in moved) == known),
        "plan.matches(params)": timed(lambda: plan.matches(moved)),
        "full check: fused_step_misfit(params)": timed(
            lambda: fused_step_misfit(moved, explicit=True)),
    }
    optimizer.discard_step()
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=graphs.WARMUP_STEPS + 1)
    parser.add_argument("--repeats", type=int, default=200, help="repeats of each check")
    args = parser.parse_args()
    stub_launches()
    params = resnet50_params()
    assert sum(p.numel() for p in params) == 25_557_032
    generator = torch.Generator().manual_seed(1)
    grad_sets = [[torch.randn(p.shape, generator=generator).contiguous(
        memory_format=torch.channels_last if p.dim() == 4 else torch.contiguous_format)
        for p in params] for _ in range(3)]  # 3: each half meets new addresses every step
    modes = {"gradients stay put": grad_sets[:1], "gradients move every pass": grad_sets}
    results = []
    total = len(CASES) * len(modes) * (args.steps + args.warmup)
    with bar(total, "host time per step", unit="step") as progress:
        for name, (cls, options) in CASES.items():
            for mode, sets in modes.items():
                results.append({"optimizer": name, "gradients": mode, **run_case(
                    cls, options, params, sets, args.steps, args.warmup, progress)})
    checks = check_costs(params, grad_sets[0], args.repeats)
    rows = [[r["optimizer"], r["gradients"], f"{r['plan_build_first_step_ms']:.1f}",
             f"{r['plan_build_second_step_ms']:.1f}", f"{r['first_step_ms']:.2f}",
             f"{r['second_step_ms']:.2f}", f"{r['second_step_base_optimizer_ms']:.2f}",
             f"{r['second_step_without_base_ms']:.2f}"] for r in results]
    text = table(rows, ["optimizer", "gradients", "build: first_step ms", "build: second_step ms",
                        "first_step ms", "second_step ms", "of which base SGD ms",
                        "second_step w/o base ms"])
    text += "\n\n" + table([[k, f"{v * 1e3:.1f}"] for k, v in checks.items()],
                           ["check (161 parameters)", "us"])
    path = save_result("bench_step_host_cpu", {
        "model": "resnet50", "parameters": len(params), "numel": 25_557_032,
        "launches": "stubbed (no-op)", "base_optimizer": {"class": "SGD", **SGD},
        "steps": args.steps, "warmup": args.warmup, "cases": results,
        "checks_ms": checks, "check_repeats": args.repeats})
    summary = (f"median of {args.steps} steps after {args.warmup} warm-up steps; Triton launches "
               "stubbed; ResNet-50 parameters, CPU; times in ms unless noted\n" + text)
    log = Path(RESULTS) / "bench_step_host_cpu.log"
    write_text(str(log), " ".join(sys.argv) + "\n" + summary + f"\nsaved {path}\n")
    print(summary)
    print(f"saved {path}, {log}")


if __name__ == "__main__":
    main()
