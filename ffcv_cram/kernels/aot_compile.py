"""Compile every Triton launch the host code makes for CUDA targets, on a machine without a GPU.

The host functions (`select`, `perturb_and_select`, `perturb`, `nm_select`, `finish`) run unchanged
on CPU tensors of ResNet-50's shapes, with every flag combination the optimizers and the mask API
use. Each launch is intercepted in `JITFunction.run` and turned into a warm-up (compile, no launch)
under a stand-in driver that reports the chosen target, so triton itself computes the exact
specialisation a real launch would get (signature, constexprs, 16-byte alignment, ints equal to 1).
Triton assembles the PTX with the `ptxas -v` bundled in its wheel; its log gives registers, spills
and stack per variant, the metadata the shared memory.

The kernels must be compiled, not interpreted, so this runs in a fresh process without
TRITON_INTERPRET (`run_in_subprocess`), also under another triton put first on sys.path.
`python -m ffcv_cram.kernels.aot_compile [capability ...]` prints the table as JSON.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile

TARGETS = (90, 80)  # Hopper (H100/H200), Ampere (A100)
# the passes that read every weight (perturb is the first histogram pass without HIST): at most
# MAX_REGISTERS per thread, so that 16 warps (two blocks of 8, or one of 16) fit an SM's 64k
# registers
WEIGHT_PASSES = ("_histogram_pass", "_apply_threshold", "_finish", "_sample", "_full")
MAX_REGISTERS = 128
# the passes of the default global step (the bracket select and the finish): no warp ballots
# (triton 3.6 lowers tl.histogram to them, ~200 instructions per key)
STEP_PASSES = ("_sample", "_full", "_finish")


# -- the launches: host code on CPU tensors ----------------------------------------------------
def _resnet50_parameters():
    """Empty CPU tensors shaped like ResNet-50's parameters (conv weights channels_last)."""
    import torch
    import torchvision
    with torch.device("meta"):
        model = torchvision.models.resnet50()
    params = []
    for p in model.parameters():
        t = torch.empty(p.shape)
        params.append(t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t)
    return params


def _like(tensors, dtype=None):
    import torch
    return [torch.empty_like(t, dtype=dtype) for t in tensors]


def _run_host_code() -> None:
    """Every launch of the fused CrAM steps (TopkCrAM, NMTopkCrAM) and of the mask API."""
    import torch

    from ..prune_groups import nm_groupable, selection_groups
    from .triton_nm import nm_select
    from .triton_select import select
    from .triton_step import Perturbation, finish, nm_compress, perturb, perturb_and_select

    params = _resnet50_parameters()
    prunable = [p for p in params if p.dim() > 1]
    grads, w_saves, g_saves = _like(params), _like(params), _like(params)
    masks = [torch.empty_like(p, dtype=torch.bool) if p.dim() > 1 else None for p in params]
    prunable_masks = [m for m in masks if m is not None]
    inv_norm = torch.ones(())
    for scope in ("global", "uniform"):
        prunable_groups, counts = selection_groups(prunable, 0.9, scope)
        for zero in (False, True):  # magnitude_masks, compress_
            select(prunable, prunable_groups, counts, prunable_masks, zero)
        if scope == "global":  # the radix passes of a global threshold (benchmarked against)
            select(prunable, prunable_groups, counts, prunable_masks, False, method="radix")
        selected = iter(prunable_groups)
        groups = [next(selected) if p.dim() > 1 else -1 for p in params]
        for plus in (False, True):
            for norm in (False, True):
                perturbation = Perturbation(grads, w_saves, g_saves if plus else None,
                                            [0.05] * len(params), inv_norm if norm else None)
                perturb_and_select(params, perturbation, groups, counts, masks)
                if scope == "global":  # the N:M step perturbs without selecting
                    perturb(params, perturbation)
    for n, m in ((2, 4), (4, 8)):
        grouped = [p for p in prunable if nm_groupable(p, m)]
        nm_select(grouped, _like(grouped, torch.bool), n, m, zero=False)  # nm_masks
        nm_compress(grouped, _like(grouped, torch.bool), n, m)
    for sparse in (False, True):
        for plus in (False, True):
            finish(params, grads, w_saves, g_saves if plus else None, masks if sparse else None)
    # DDP's gradient_as_bucket_view: gradients are views into a flat bucket, at offsets with no
    # 16-byte alignment; the passes that read them take the scalar-access variant
    bucket = torch.empty(1 + sum(p.numel() for p in params))
    starts = torch.tensor([1] + [p.numel() for p in params]).cumsum(0).tolist()
    views = [bucket.as_strided(p.shape, p.stride(), start) for start, p in zip(starts, params)]
    prunable_groups, counts = selection_groups(prunable, 0.9, "global")
    selected = iter(prunable_groups)
    groups = [next(selected) if p.dim() > 1 else -1 for p in params]
    perturb_and_select(params, Perturbation(views, w_saves, g_saves, [0.05] * len(params)),
                       groups, counts, masks)
    finish(params, views, w_saves, g_saves, masks)


# -- interception: compile for a target instead of launching -----------------------------------
class _TargetDriver:
    """Stands in for the CUDA driver: reports the target; nothing is ever launched."""

    def __init__(self, capability: int):
        from triton.backends.compiler import GPUTarget
        self.target = GPUTarget("cuda", capability, 32)
        self.capability = capability

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return self.capability  # one JIT cache per target

    def get_current_stream(self, device=None):
        return 0


_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_FRAME = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def _ptxas_numbers(log: str) -> dict:
    regs, frame = _PTXAS_REGS.search(log), _PTXAS_FRAME.search(log)
    if regs is None or frame is None:
        raise RuntimeError(f"no ptxas -v report in the compile log:\n{log}")
    stack, spill_stores, spill_loads = (int(x) for x in frame.groups())
    return dict(registers=int(regs.group(1)), spill_stores=spill_stores, spill_loads=spill_loads,
                stack=stack)


def _ptx_counts(ptx: str) -> dict:
    """Global memory instructions worth watching: 128-bit accesses, atomic orderings."""
    ops = [m.group(1).split(".") for m in re.finditer(r"\b((?:ld|st|atom|red)(?:\.\w+)+)", ptx)]
    ops = [parts for parts in ops if "global" in parts]

    def count(kinds, flag=None):
        return sum(parts[0] in kinds and (flag is None or flag in parts) for parts in ops)
    return dict(ld=count(("ld",)), ld_v4=count(("ld",), "v4"),
                st=count(("st",)), st_v4=count(("st",), "v4"),
                atomic_acq_rel=count(("atom", "red"), "acq_rel"),
                atomic_relaxed=count(("atom", "red"), "relaxed"),
                ballots=len(re.findall(r"\bvote\.(?:sync\.)?ballot", ptx)))


def _variant_name(fn, kwargs) -> str:
    """Kernel name and its constexprs, e.g. `_finish[SPARSE,PLUS,BLOCK=4096]`."""
    constexprs = [p.name for p in fn.params if p.is_constexpr]
    parts = []
    for name in constexprs:
        value = kwargs.get(name)
        if value is True:
            parts.append(name)
        elif value is not None and value is not False:
            parts.append(f"{name}={value}")
    return f"{fn.__name__}[{','.join(parts)}]"


@contextlib.contextmanager
def _compile_instead_of_launch(capability: int, rows: list):
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    original = JITFunction.run
    seen = set()

    def run(self, *args, grid, warmup, **kwargs):
        log = io.StringIO()
        with contextlib.redirect_stdout(log):  # TRITON_DUMP_PTXAS_LOG prints the ptxas -v report
            kernel = original(self, *args, grid=grid, warmup=True, **kwargs)
        if id(kernel) in seen:  # the same specialisation again: already compiled and recorded
            return kernel
        seen.add(id(kernel))
        meta = kernel.metadata
        rows.append(dict(variant=_variant_name(self, kwargs), capability=capability,
                         arch=f"sm_{capability}", num_warps=meta.num_warps,
                         shared=meta.shared, **_ptxas_numbers(log.getvalue()),
                         **_ptx_counts(kernel.asm["ptx"])))
        return kernel

    previous = getattr(driver, "_active", None)  # (reading `active` would look for a GPU)
    driver.set_active(_TargetDriver(capability))
    JITFunction.run = run
    try:
        yield
    finally:
        JITFunction.run = original
        driver.set_active(previous)


def compile_all(capabilities=TARGETS) -> list[dict]:
    """One row per (launch variant, target); raises on any compile error."""
    import triton
    if os.environ.get("TRITON_INTERPRET") == "1" or not os.environ.get("TRITON_DUMP_PTXAS_LOG"):
        raise RuntimeError("compile_all needs TRITON_INTERPRET unset and TRITON_DUMP_PTXAS_LOG=1, "
                           "set before triton loads: use run_in_subprocess")
    rows = []
    for capability in capabilities:
        with _compile_instead_of_launch(capability, rows):
            _run_host_code()
    for row in rows:
        row["triton"] = triton.__version__
    return rows


def missed_targets(rows) -> list[str]:
    """The compile targets: no spills on sm_90, weight passes within MAX_REGISTERS, the default
    step's passes without warp ballots."""
    misses = []
    for r in rows:
        where = f"{r['variant']} (triton {r['triton']}, {r['arch']})"
        if r["capability"] == 90 and (r["spill_stores"] or r["spill_loads"]):
            misses.append(f"{r['spill_stores']}/{r['spill_loads']} bytes spilled: {where}")
        if r["variant"].startswith(WEIGHT_PASSES) and r["registers"] > MAX_REGISTERS:
            misses.append(f"{r['registers']} registers > {MAX_REGISTERS}: {where}")
        if r["variant"].startswith(STEP_PASSES) and r["ballots"]:
            misses.append(f"{r['ballots']} warp ballots: {where}")
    return misses


def run_in_subprocess(capabilities=TARGETS, triton_path: str | None = None,
                      timeout: float = 900) -> list[dict]:
    """`compile_all` in a fresh process: compiled (not interpreted) kernels, an empty triton
    cache (so ptxas runs and reports), and `triton_path` first on sys.path when given."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    paths = [p for p in (triton_path, repo, env.get("PYTHONPATH")) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["TRITON_DUMP_PTXAS_LOG"] = "1"
    with tempfile.TemporaryDirectory(prefix="triton-aot-") as cache:
        env["TRITON_CACHE_DIR"] = cache
        out = subprocess.run(
            [sys.executable, "-m", "ffcv_cram.kernels.aot_compile", *map(str, capabilities)],
            env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"the ahead-of-time compile failed (exit {out.returncode}):\n"
                           f"{out.stderr[-6000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    table = compile_all([int(c) for c in sys.argv[1:]] or TARGETS)
    sys.stdout.flush()
    print(json.dumps(table))
