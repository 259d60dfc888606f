"""Training-step time with and without torch.compile, for SGD and CrAM+ (global), through TrainStep.

CPU: ResNet-20, batch 128, 32 px, fp32. With CUDA also ResNet-50, bf16, batch 256 (or the largest
that fits: `--gpu-batch max`) at each of `--gpu-resolutions`. All channels_last, data resident on
the device, the model compiled as `--training.compile` does (`ffcv_cram.models.compiled.
compile_model`; the optimizer step stays eager), in each of `--modes`: 'default' (inductor) and,
on CUDA, 'reduce-overhead' (inductor's kernels replayed as CUDA graphs, `--training.compile_mode`).

Per case: the compiled CrAM+ step runs first, so its first step pays for both of its graphs (the
training one and the frozen-BatchNorm one) as a CrAM+ run does; the compiled SGD step then reuses
the training graph (dynamo shares compiled code between instances of a model class), so only
CrAM+ has a compile cost. Whether inductor's on-disk cache served it is recorded (a second run of
this script is faster to compile than a first). Every step runs twice more before timing (a CUDA
graph mode warms up, then records). Then eager and compiled steps are timed in interleaved
rounds: speedup = median over rounds of eager / compiled step time; images/s = batch / median
step time; the CrAM+ / SGD ratio is reported for each variant. Dynamo's graph count is checked
flat over the timed rounds. CUDA: peak memory of one step of each variant, with every variant's
model and optimizer state resident (a CUDA graph mode also keeps its graphs' memory pool).

`--gpu-batch max`: the largest of MAX_BATCH_CANDIDATES whose eager CrAM+ step (the most memory of
the variants without CUDA graphs) peaks under `--memory-fraction` of the GPU; use it with the
modes without CUDA graphs, whose pools stay allocated while the other variants run.
`--dry-run`: a tiny conv net on the CPU, one round (a check of the script; nothing saved).
"""
import argparse
import copy
import gc
import statistics
import time

import numpy as np
import torch
from torch import nn
from torch._dynamo.utils import counters

from ffcv_cram.choices import TRAIN_COMPILE_MODES
from ffcv_cram.models import get_model
from ffcv_cram.models.compiled import compile_model, graph_count, replays_graphs
from ffcv_cram.train.optimizer_options import OptimizerOptions
from ffcv_cram.train.step import TrainStep, make_optimizer

from common import interleaved, save_result, table

METHODS = {"cram+ global": "cram", "sgd": "sgd"}  # CrAM+ first: it compiles both graphs
MAX_BATCH_CANDIDATES = (256, 320, 384, 448, 512, 640, 768, 1024, 1280)


def tiny_net(classes):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))


def build(method, base, amp, device, mode=None):
    model = copy.deepcopy(base)
    opt = make_optimizer(model.parameters(), OptimizerOptions(
        method=method, lr=0.1, momentum=0.9, weight_decay=1e-4, rho=0.05,
        sparsities=(0.5, 0.7, 0.9)))
    step = TrainStep(compile_model(model, mode) if mode else model, opt, method, amp, device=device)
    step.replays_cuda_graphs = bool(mode) and replays_graphs(mode)
    return step


def inputs(batch, res, classes, device):
    x = torch.randn(batch, 3, res, res, device=device).contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, classes, (batch,), device=device)


def largest_batch(base, res, classes, device, amp, candidates, fraction):
    """The largest of `candidates` (ascending) whose eager CrAM+ step peaks under `fraction` of
    the device's memory, and what each try peaked at. On the CPU every candidate fits."""
    cuda = device.type == "cuda"
    limit = fraction * torch.cuda.get_device_properties(device).total_memory if cuda else None
    best, tries = None, {}
    for batch in candidates:
        step = x = y = None
        try:
            step = build("cram", base, amp, device)
            x, y = inputs(batch, res, classes, device)
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(2):  # the second step: momentum buffers exist
                step(x, y)
            peak = torch.cuda.max_memory_allocated(device) if cuda else 0
        except torch.OutOfMemoryError:
            peak = None
        finally:
            del step, x, y
            gc.collect()
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.empty_cache()
        tries[batch] = peak
        if peak is None or (limit is not None and peak > limit):
            break
        best = batch
    if best is None:
        raise SystemExit(f"error: not even batch {candidates[0]} fits; lower the candidates")
    return best, tries


def peak_memory(call, device):
    """(peak bytes while `call` runs one step, bytes allocated before it): CUDA only."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    call()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device), before


def first_step(step, x, y, sync):
    """Seconds of a compiled step's first call, graphs it compiled, inductor cache hits/misses."""
    graphs, cache = graph_count(), dict(counters["inductor"])
    start = time.perf_counter()
    step(x, y)
    if sync:
        sync()
    after = counters["inductor"]
    return {"compile_s": time.perf_counter() - start, "graphs": graph_count() - graphs,
            "fx_cache_hits": after["fxgraph_cache_hit"] - cache.get("fxgraph_cache_hit", 0),
            "fx_cache_misses": after["fxgraph_cache_miss"] - cache.get("fxgraph_cache_miss", 0)}


def case(name, batch, res, classes, device, amp, rounds, modes, fraction=0.9,
         candidates=MAX_BATCH_CANDIDATES, deadline_s=None):
    """`batch`: a number, or 'max' (`largest_batch`). `deadline_s`: seconds from the start after
    which no further compile mode starts (see below)."""
    started = time.perf_counter()
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as the trainer
    net = tiny_net(classes) if name == "tiny" else get_model(name, classes)
    base = net.to(device, memory_format=torch.channels_last).train()
    probe = None
    if batch == "max":
        batch, tries = largest_batch(base, res, classes, device, amp, candidates, fraction)
        probe = {"fraction": fraction, "peak_bytes_by_batch": tries}
    x, y = inputs(batch, res, classes, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    torch._dynamo.reset()
    steps = {f"{label}|eager": build(method, base, amp, device) for label, method in METHODS.items()}
    compiled, skipped, last_cost = {}, [], 0.0
    for mode in list(modes):
        # a mode whose compile would likely end past the deadline is left out (the next costs
        # about what the last did: inductor's kernel cache serves much of it), so that a section
        # with a time limit still saves the modes it measured
        if deadline_s is not None and time.perf_counter() - started + last_cost > deadline_s:
            skipped.append(mode)
            continue
        for label, method in METHODS.items():
            step = steps[f"{label}|{mode}"] = build(method, base, amp, device, mode)
            compiled[f"{label}|{mode}"] = first_step(step, x, y, sync)
        last_cost = compiled[f"cram+ global|{mode}"]["compile_s"]
    modes = [mode for mode in modes if mode not in skipped]
    calls = {key: (lambda s=step: s(x, y)) for key, step in steps.items()}
    for call in calls.values():  # outside the graph count: the eager steps' first call, and a
        call()                   # CUDA graph mode's warm-up and recording
        call()
    graphs = graph_count()
    memory = ({key: peak_memory(call, device) for key, call in calls.items()}
              if device.type == "cuda" else {})
    times = interleaved(calls, rounds, warmup=0, sync=sync)
    methods = {}
    for label in METHODS:
        eager = np.array(times[f"{label}|eager"])
        row = {"eager_median_s": statistics.median(eager),
               "eager_images_per_s": batch / statistics.median(eager), "modes": {}}
        if memory:
            row["eager_peak_memory_bytes"], row["eager_memory_before_bytes"] = \
                memory[f"{label}|eager"]
        for mode in modes:
            t = np.array(times[f"{label}|{mode}"])
            speedup = eager / t
            quartiles = [float(q) for q in np.percentile(speedup, [25, 75])]
            row["modes"][mode] = {"median_s": statistics.median(t),
                                  "images_per_s": batch / statistics.median(t),
                                  "speedup": float(np.median(speedup)),
                                  "speedup_quartiles": quartiles, **compiled[f"{label}|{mode}"]}
            if memory:
                peak, before = memory[f"{label}|{mode}"]
                row["modes"][mode].update(peak_memory_bytes=peak, memory_before_bytes=before)
        methods[label] = row
    cram_over_sgd = {variant: float(np.median(np.array(times[f"cram+ global|{variant}"])
                                              / np.array(times[f"sgd|{variant}"])))
                     for variant in ("eager", *modes)}
    out = {"model": name, "device": str(device), "batch": batch, "resolution": res, "amp": amp,
           "rounds": rounds, "times_s": times, "methods": methods, "cram_over_sgd": cram_over_sgd,
           "recompiles_while_timed": graph_count() - graphs}
    if probe:
        out["max_batch_probe"] = probe
    if skipped:
        out["modes_skipped_for_time"] = skipped
    return out


def rows(c):
    out = []
    for label, m in c["methods"].items():
        variants = [("eager", m["eager_median_s"], None, m.get("eager_peak_memory_bytes"))]
        variants += [(mode, s["median_s"], s, s.get("peak_memory_bytes"))
                     for mode, s in m["modes"].items()]
        for mode, median, s, peak in variants:
            compile_cost = ("" if s is None else
                            f"{s['compile_s']:.1f} s ({s['graphs']} graphs, "
                            f"{'cold' if s['fx_cache_misses'] else 'cache hit'})"
                            if s["graphs"] else "shared")
            out.append([f"{c['model']} {c['resolution']}px b{c['batch']} {c['amp']}", label, mode,
                        f"{1e3 * median:.1f}", f"{c['batch'] / median:,.0f}",
                        "" if s is None else f"{s['speedup']:.3f}",
                        "" if s is None else "{:.3f}-{:.3f}".format(*s["speedup_quartiles"]),
                        "" if peak is None else f"{peak / 2**30:.1f}", compile_cost])
    return out


HEADER = ["case", "method", "variant", "ms", "img/s", "speedup", "quartiles", "peak GiB",
          "compile"]


def summary(c) -> str:
    ratios = ", ".join(f"{k} {v:.3f}" for k, v in c["cram_over_sgd"].items())
    return (f"{c['model']} {c['resolution']}px b{c['batch']}: CrAM+ / SGD step time: {ratios}; "
            f"recompiles while timed: {c['recompiles_while_timed']}")


def batch_arg(text: str):
    if text == "max":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a batch size >= 1, or 'max'")
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-rounds", type=int, default=20, help="0: no CPU case")
    parser.add_argument("--gpu-rounds", type=int, default=20)
    parser.add_argument("--gpu-batch", type=batch_arg, default=256,
                        help="a batch size, or max: the largest that fits (see the docstring)")
    parser.add_argument("--gpu-resolutions", type=int, nargs="+", default=[224])
    parser.add_argument("--memory-fraction", type=float, default=0.9,
                        help="--gpu-batch max: the share of the GPU's memory a step may peak at")
    parser.add_argument("--modes", nargs="*", choices=TRAIN_COMPILE_MODES, default=["default"],
                        help="compile modes timed against eager (none: eager only)")
    parser.add_argument("--deadline-s", type=float, default=None,
                        help="per GPU case: start no further compile mode after about this long")
    parser.add_argument("--tag", default="",
                        help="saved as bench_compile_cuda<tag>.json (one file per gpu_check section)")
    parser.add_argument("--dry-run", action="store_true",
                        help="a tiny net on the CPU, one round: a check of the script")
    args = parser.parse_args()
    if args.dry_run:  # the CPU runs a CUDA graph mode without graphs: a check of the code path
        batch = "max" if args.gpu_batch == "max" else 4
        c = case("tiny", batch, 8, 4, torch.device("cpu"), "none", 1, args.modes,
                 candidates=(2, 4))
        assert c["recompiles_while_timed"] == 0, c["recompiles_while_timed"]
        print(table(rows(c), HEADER))
        print(summary(c))
        print("dry run: eager and compiled steps ran on the CPU; nothing saved")
        return
    cases = []
    if args.cpu_rounds:
        cpu_modes = [m for m in args.modes if not replays_graphs(m)]  # no CUDA graphs on a CPU
        cases.append(case("resnet20", 128, 32, 10, torch.device("cpu"), "none", args.cpu_rounds,
                          cpu_modes))
    if torch.cuda.is_available():
        for res in args.gpu_resolutions:
            cases.append(case("resnet50", args.gpu_batch, res, 1000, torch.device("cuda"),
                              "bf16", args.gpu_rounds, args.modes, args.memory_fraction,
                              deadline_s=args.deadline_s))
    name = "bench_compile_" + ("cuda" if torch.cuda.is_available() else "cpu") + args.tag
    path = save_result(name, {"cases": cases, "targets": {
        "sgd_images_per_s_224px_h200": 6500, "cram_over_sgd": 2.0}})
    print(table([r for c in cases for r in rows(c)], HEADER))
    for c in cases:
        print(summary(c))
        if c.get("modes_skipped_for_time"):
            print(f"skipped for time: {', '.join(c['modes_skipped_for_time'])}")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
