"""Sections 2-6 of bench_topk_kernel.py: the clocks and the measurements.

2. mask timings, 3. where the time goes (torch.profiler), 4. bracket health, 5. the optimizer
side within a CrAM+ step (`Rig`), 6. CrAM+ / SGD through the trainer's TrainStep.
"""
import statistics
import time

import torch

from ffcv_cram import TopkCrAM
from ffcv_cram.kernels.triton_select import select
from ffcv_cram.optim.graphs import WARMUP_STEPS
from ffcv_cram.sparsity.masks import magnitude_masks, selection_groups
from ffcv_cram.train.optimizer_options import OptimizerOptions
from ffcv_cram.train.step import TrainStep, make_optimizer

from common import interleaved, ratio_stats
from reference_cram import reference_masks
from topk_checks import SPARSITIES, clone, forward_backward, no_capture, sgd_kwargs, train_step


# -- clocks --------------------------------------------------------------------------------------
class Clock:
    """alone: events around each call, the GPU idle before it (launch gaps included); queued: the
    calls queued behind a GPU sleep long enough for the host to issue them all, events between
    them (device time); host: perf_counter around issuing one call, the GPU idle before it.
    On the CPU all three are perf_counter around the call."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.cycles_per_ms = None
        self.launch_bound = []  # queued timings whose host did not keep ahead of the GPU
        if self.cuda:
            try:
                torch.cuda._sleep(1_000_000)  # load the kernel
                start, end = self._events(2)
                start.record()
                torch.cuda._sleep(20_000_000)
                end.record()
                end.synchronize()
                self.cycles_per_ms = 20_000_000 / start.elapsed_time(end)
            except Exception as err:  # noqa: BLE001 (then every queued timing is an alone one)
                print(f"warning: no GPU sleep ({err}): queued timings include launch gaps")
                self.launch_bound.append("all (no GPU sleep)")

    @staticmethod
    def _events(n):
        return [torch.cuda.Event(enable_timing=True) for _ in range(n)]

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def _warm(self, fn, warmup, prepare):
        for _ in range(warmup if self.cuda else 0):  # (--smoke: the interpreter compiles nothing)
            prepare()
            fn()
        self.sync()

    def host(self, fn, repeats, warmup=1, prepare=lambda: None):
        self._warm(fn, warmup, prepare)
        times = []
        for _ in range(repeats):
            prepare()
            self.sync()
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
            self.sync()
        return times

    def alone(self, fn, repeats, warmup=1, prepare=lambda: None):
        if not self.cuda:
            return self.host(fn, repeats, warmup, prepare)
        self._warm(fn, warmup, prepare)
        times = []
        for _ in range(repeats):
            prepare()
            start, end = self._events(2)
            self.sync()
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return times

    def queued(self, fn, repeats, warmup=1, prepare=lambda: None, label=""):
        if not self.cuda:
            return self.host(fn, repeats, warmup, prepare)
        if self.cycles_per_ms is None:
            return self.alone(fn, repeats, warmup, prepare)
        issue = max(self.host(fn, 2, warmup, prepare))  # host seconds to issue one call
        sleep_ms = min(2e3 * repeats * issue + 2, 2000)
        starts, ends = self._events(repeats), self._events(repeats)
        self.sync()
        torch.cuda._sleep(int(sleep_ms * self.cycles_per_ms))
        began = time.perf_counter()
        for i in range(repeats):
            prepare()
            starts[i].record()
            fn()
            ends[i].record()
        issued_ms = (time.perf_counter() - began) * 1e3
        ends[-1].synchronize()
        if issued_ms > sleep_ms:
            self.launch_bound.append(label)
        return [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]


def median(values):
    return statistics.median(values) if values else None


def copy_bandwidth(device, clock, repeats, numel):
    """Bytes read + written per second by a large device-to-device copy."""
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / median(clock.alone(lambda: dst.copy_(src), repeats, warmup=2))


# -- 2. mask timings -----------------------------------------------------------------------------
def time_masks(weight_sets, clock, repeats, sparsities):
    outs = [[torch.empty_like(w, dtype=torch.bool) for w in ws] for ws in weight_sets]
    # the reference flattens with .view: it gets contiguous (not channels_last) copies
    contiguous = [[w.contiguous() for w in ws] for ws in weight_sets]
    turn = [0]

    def rotating(fn, sets=weight_sets):
        def run():
            i = turn[0] = (turn[0] + 1) % len(sets)
            fn(sets[i], outs[i])
        return run
    weights = weight_sets[0]
    rows = []
    for sparsity in sparsities:
        groups, counts = selection_groups(weights, sparsity, "global")
        row = {"sparsity": sparsity}
        row["reference_s"] = median(clock.queued(rotating(
            lambda w, o: reference_masks(w, sparsity), contiguous), repeats, label="reference"))
        row["torch_path_s"] = median(clock.alone(rotating(
            lambda w, o: magnitude_masks(w, sparsity, out=o, kernels=False)),
            max(3, repeats // 3)))
        row["radix_s"] = median(clock.queued(rotating(
            lambda w, o: select(w, groups, counts, o, False, method="radix")), repeats,
            label="radix"))
        row["bracket_s"] = median(clock.queued(rotating(
            lambda w, o: magnitude_masks(w, sparsity, out=o, kernels=True)), repeats,
            label="bracket"))
        row["bracket_alone_s"] = median(clock.alone(rotating(
            lambda w, o: magnitude_masks(w, sparsity, out=o, kernels=True)), repeats))
        rows.append(row)
    groups, counts = selection_groups(weights, 0.9, "global")
    forced = clock.alone(rotating(lambda w, o: select(w, groups, counts, o, False,
                                                      method="bracket", force_miss=True)),
                         2 if clock.cuda else 1, warmup=0)
    return rows, {"sparsity": 0.9, "calls": len(forced), "median_s": median(forced)}


# -- 3. where the time goes ----------------------------------------------------------------------
def profile(fn, clock, calls, prepare=None):
    """Per call: device kernels {name: [count, us]}, copies/memsets, host launch API calls.
    `prepare` runs before the profiler starts (then only one call is profiled)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if clock.cuda else [])
    calls = 1 if prepare else calls
    for _ in range(2 if clock.cuda else 0):  # warm
        if prepare:
            prepare()
        fn()
    if prepare:
        prepare()
    clock.sync()
    with torch_profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        clock.sync()
    kernels, copies, api = {}, {}, {}
    for event in prof.events():
        device = getattr(getattr(event, "device_type", None), "name", "") == "CUDA"
        name = event.name
        if device:
            into = copies if name.startswith(("Memcpy", "Memset")) else kernels
            entry = into.setdefault(name[:120], [0, 0.0])
            entry[0] += 1
            entry[1] += event.time_range.elapsed_us()
        elif name.startswith("cu") and ("Launch" in name or "Memcpy" in name or "Memset" in name):
            api[name] = api.get(name, 0) + 1
    per_call = lambda d: {k: [v[0] / calls, v[1] / calls] for k, v in  # noqa: E731
                          sorted(d.items(), key=lambda kv: -kv[1][1])}
    kernels, copies = per_call(kernels), per_call(copies)
    return {"kernels": kernels, "copies": copies,
            "host_api_calls": {k: v / calls for k, v in api.items()},
            "launches": sum(v[0] for v in kernels.values()),
            "copy_launches": sum(v[0] for v in copies.values()),
            "device_us": sum(v[1] for v in kernels.values()) + sum(v[1] for v in copies.values())}


def where_time_goes(weights, first_half, rigs, clock, repeats):
    out = [torch.empty_like(w, dtype=torch.bool) for w in weights]
    call = lambda: magnitude_masks(weights, 0.9, out=out, kernels=True)  # noqa: E731
    calls = 3 if clock.cuda else 1
    result = {"sparsity": 0.9, "bracket_call": profile(call, clock, calls)}
    result["bracket_call"]["host_s"] = median(clock.host(call, repeats))
    in_step = lambda: first_half.run(0.9)  # noqa: E731  (perturbs the copies again and again)
    result["first_half_host_s"] = median(clock.host(in_step, repeats, prepare=first_half.reset))
    first_half.reset()
    for name in ("fused", "fused + graph"):
        rig = rigs.get(name)
        if rig is None:
            continue
        side = profile(rig.optimizer_side, clock, calls, prepare=rig.restore)
        side["host_s"] = median(clock.host(rig.optimizer_side, repeats, prepare=rig.restore))
        result[name] = side
    return result


# -- 4. bracket health ---------------------------------------------------------------------------
def bracket_health(first_half, grad_sets, calls, deadline_s, sparsities):
    """CrAM+ first halves on real gradients (batch k in turn, times a random scale in
    [0.3, 3]): misses and candidates per call, per sparsity."""
    space = first_half.workspace
    generator = torch.Generator().manual_seed(0)
    rows = []
    start = time.perf_counter()
    for sparsity in sparsities:
        before = int(space.misses)
        seen = []
        for i in range(calls):
            if time.perf_counter() - start > deadline_s:
                break
            scale = float(10 ** (torch.rand((), generator=generator) - 0.5))
            torch._foreach_copy_(first_half.grads, grad_sets[i % len(grad_sets)])
            torch._foreach_mul_(first_half.grads, scale)
            first_half.reset()
            first_half.run(sparsity)
            seen.append(space.state[6:9].clone())  # (miss, candidates, spilled candidates)
        state = torch.stack(seen).cpu() if seen else torch.zeros((0, 3), dtype=torch.int64)
        candidates = state[:, 1].double()
        rows.append({"sparsity": sparsity, "calls": len(seen), "misses": int(space.misses) - before,
                     "miss_flags": int(state[:, 0].sum()), "bucket": space.bucket,
                     "spill_capacity": space.spill_cap,
                     "spilled_max": int(state[:, 2].max()) if len(seen) else None,
                     "candidates_median": float(candidates.median()) if len(seen) else None,
                     "candidates_max": float(candidates.max()) if len(seen) else None})
    first_half.reset()
    return rows


# -- 5. the optimizer side within a step ---------------------------------------------------------
class Rig:
    """A CrAM+ optimizer on a copy of the model, warmed up (graphs captured for every sparsity),
    with fixed gradients for timing its optimizer side alone."""

    def __init__(self, base, x, y, kernels, graph, cuda):
        self.model, self.x, self.y = clone(base), x, y
        self.opt = TopkCrAM(self.model.parameters(), torch.optim.SGD, kernels=kernels,
                            cuda_graph=graph, **sgd_kwargs())
        if graph and not cuda:
            no_capture(self.opt)
        drawn = set()  # (graphs: until one is captured for every sparsity)
        for i in range(WARMUP_STEPS + 1 + 30 if cuda else 1):
            self.step()
            if i >= WARMUP_STEPS:
                drawn.add(self.opt.last_sparsity)
                if len(drawn) == len(SPARSITIES) or not graph:
                    break
        forward_backward(self.model, x, y)
        self.params = [p for p in self.model.parameters()]
        self.grads0 = [p.grad.clone() for p in self.params]
        self.grads = [g.clone() for g in self.grads0]
        self.params0 = [p.detach().clone() for p in self.params]

    def step(self):
        train_step(self.model, self.opt, self.x, self.y)

    def restore(self):
        """The weights and the second pass's gradients again (the finish overwrites them), at
        the same places: timed optimizer sides on fixed gradients would otherwise walk the
        weights along them until training diverges (and the weights' structure changes)."""
        with torch.no_grad():
            torch._foreach_copy_(self.params, self.params0)
        torch._foreach_copy_(self.grads, self.grads0)
        for p, g in zip(self.params, self.grads):
            p.grad = g

    def misses(self) -> int:
        """Bracket misses so far in this optimizer's selections (0 on the torch path)."""
        plan = getattr(self.opt, "_plan", None)
        bracket = getattr(getattr(plan, "layout", None), "bracket", None)
        return int(bracket.workspace.misses) if bracket is not None else 0

    def optimizer_side(self):
        self.opt.first_step(zero_grad=False)
        self.opt.second_step()


def time_step_overhead(rigs, clock, repeats, cuda):
    out = {}
    for name, rig in rigs.items():
        misses = rig.misses()
        row = {"step_s": median(clock.alone(rig.step, repeats, warmup=1))}
        row["step_misses"] = rig.misses() - misses
        row["optimizer_side_s"] = median(clock.alone(rig.optimizer_side, repeats,
                                                     prepare=rig.restore))
        if name != "torch path":  # (the torch path waits for the host: no queue to hide behind)
            row["optimizer_side_device_s"] = median(clock.queued(
                rig.optimizer_side, repeats, prepare=rig.restore, label=f"side {name}"))
            row["optimizer_side_host_s"] = median(clock.host(rig.optimizer_side, repeats,
                                                             prepare=rig.restore))
        row["side_misses"] = rig.misses() - misses - row["step_misses"]
        graphs = getattr(rig.opt, "_graphs", None)
        row["graphs_held"] = len(graphs.graphs) if graphs is not None else 0
        out[name] = row
    base = rigs["fused"].opt.base_optimizer
    rigs["fused"].restore()
    sgd = median(clock.queued(base.step, repeats, label="fused SGD"))
    return out, sgd


# -- 6. CrAM+ / SGD through the trainer ----------------------------------------------------------
def step_ratio(arch, classes, batch, resolution, rounds, device, steps_per_call, graphs):
    torch.manual_seed(0)
    base = arch().to(device).to(memory_format=torch.channels_last).train()
    x = torch.randn(batch, 3, resolution, resolution, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    amp = "bf16" if device.type == "cuda" else "none"
    methods = {"sgd": ("sgd", False), "cram": ("cram", False)}
    if graphs:  # (make_optimizer's graphs need the fused SGD of CUDA parameters)
        methods["cram + graph"] = ("cram", True)
    calls = {}
    for label, (method, graph) in methods.items():
        model = clone(base)
        extra = dict(cuda_graph=True) if graph else {}
        opt = make_optimizer(model.parameters(), OptimizerOptions(
            method=method, lr=0.1, momentum=0.9, weight_decay=5e-5, **extra))
        step = TrainStep(model, opt, method, amp, device=device)

        def call(step=step):
            for _ in range(steps_per_call):
                step(x, y)
        calls[label] = call
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    warmup = -(-(WARMUP_STEPS + 6) // steps_per_call) if device.type == "cuda" else 1
    times = interleaved(calls, rounds, warmup=warmup, sync=sync)
    times = {k: [t / steps_per_call for t in v] for k, v in times.items()}
    return {"batch": batch, "resolution": resolution, "amp": amp, "rounds": rounds,
            "steps_per_call": steps_per_call, "times_s": times,
            "methods": ratio_stats(times, "sgd")}
