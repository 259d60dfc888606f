"""Training-step time with and without torch.compile, for SGD and CrAM+ (global), through TrainStep.

CPU: ResNet-20, batch 128, 32 px, fp32. With CUDA also ResNet-50, bf16, batch 256, 224 px. Both
channels_last, data resident on the device, the model compiled as `--training.compile` does
(`ffcv_cram.models.compiled.compile_model`; the optimizer step stays eager).

Per case: the compiled CrAM+ step runs first, so its first step pays for both of its graphs (the
training one and the frozen-BatchNorm one) as a CrAM+ run does; the compiled SGD step then reuses
the training graph (dynamo shares compiled code between instances of a model class), so only
CrAM+ has a compile cost. Whether inductor's on-disk cache served it is recorded (a second run of
this script is faster to compile than a first). Then eager and compiled steps are timed in
interleaved rounds: speedup = median over rounds of eager / compiled step time; the CrAM+ / SGD
ratio is reported for both. Dynamo's graph count is checked flat over the timed rounds.
`--dry-run`: a tiny conv net on the CPU, one round (a check of the script; nothing saved).
"""
import argparse
import copy
import statistics
import time

import numpy as np
import torch
from torch import nn
from torch._dynamo.utils import counters

from ffcv_cram.models import get_model
from ffcv_cram.models.compiled import COMPILE_MODES, compile_model, graph_count
from ffcv_cram.train.optimizer_options import OptimizerOptions
from ffcv_cram.train.step import TrainStep, make_optimizer

from common import interleaved, save_result, table

METHODS = {"cram+ global": "cram", "sgd": "sgd"}  # CrAM+ first: it compiles both graphs


def tiny_net(classes):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))


def build(method, base, amp, device, mode=None):
    model = copy.deepcopy(base)
    opt = make_optimizer(model.parameters(), OptimizerOptions(
        method=method, lr=0.1, momentum=0.9, weight_decay=1e-4, rho=0.05,
        sparsities=(0.5, 0.7, 0.9)))
    return TrainStep(compile_model(model, mode) if mode else model, opt, method, amp, device=device)


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


def case(name, batch, res, classes, device, amp, rounds, modes):
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as the trainer
    net = tiny_net(classes) if name == "tiny" else get_model(name, classes)
    base = net.to(device, memory_format=torch.channels_last).train()
    x = torch.randn(batch, 3, res, res, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    torch._dynamo.reset()
    steps, compiled = {}, {}
    for label, method in METHODS.items():
        steps[f"{label}|eager"] = build(method, base, amp, device)
        for mode in modes:
            step = steps[f"{label}|{mode}"] = build(method, base, amp, device, mode)
            compiled[f"{label}|{mode}"] = first_step(step, x, y, sync)
    calls = {key: (lambda s=step: s(x, y)) for key, step in steps.items()}
    for call in calls.values():  # warm-up outside the graph count: the eager steps' first call
        call()
    graphs = graph_count()
    times = interleaved(calls, rounds, warmup=0, sync=sync)
    methods = {}
    for label in METHODS:
        eager = np.array(times[f"{label}|eager"])
        row = {"eager_median_s": statistics.median(eager), "modes": {}}
        for mode in modes:
            t = np.array(times[f"{label}|{mode}"])
            speedup = eager / t
            quartiles = [float(q) for q in np.percentile(speedup, [25, 75])]
            row["modes"][mode] = {"median_s": statistics.median(t),
                                  "speedup": float(np.median(speedup)),
                                  "speedup_quartiles": quartiles, **compiled[f"{label}|{mode}"]}
        methods[label] = row
    cram_over_sgd = {variant: float(np.median(np.array(times[f"cram+ global|{variant}"])
                                              / np.array(times[f"sgd|{variant}"])))
                     for variant in ("eager", *modes)}
    return {"model": name, "device": str(device), "batch": batch, "resolution": res, "amp": amp,
            "rounds": rounds, "times_s": times, "methods": methods, "cram_over_sgd": cram_over_sgd,
            "recompiles_while_timed": graph_count() - graphs}


def rows(c):
    out = []
    for label, m in c["methods"].items():
        for mode, s in m["modes"].items():
            compile_cost = (f"{s['compile_s']:.1f} s ({s['graphs']} graphs, "
                            f"{'cold' if s['fx_cache_misses'] else 'cache hit'})"
                            if s["graphs"] else "shared")
            out.append([f"{c['model']} {c['resolution']}px b{c['batch']} {c['amp']}", label, mode,
                        f"{1e3 * m['eager_median_s']:.1f}", f"{1e3 * s['median_s']:.1f}",
                        f"{s['speedup']:.3f}", "{:.3f}-{:.3f}".format(*s["speedup_quartiles"]),
                        compile_cost])
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-rounds", type=int, default=20, help="0: no CPU case")
    parser.add_argument("--gpu-rounds", type=int, default=20)
    parser.add_argument("--gpu-batch", type=int, default=256)
    parser.add_argument("--gpu-resolution", type=int, default=224)
    parser.add_argument("--modes", nargs="+", choices=COMPILE_MODES, default=["default"])
    parser.add_argument("--dry-run", action="store_true",
                        help="a tiny net on the CPU, one round: a check of the script")
    args = parser.parse_args()
    if args.dry_run:
        c = case("tiny", 4, 8, 4, torch.device("cpu"), "none", 1, args.modes)
        assert c["recompiles_while_timed"] == 0, c["recompiles_while_timed"]
        print(table(rows(c), ["case", "method", "mode", "eager ms", "compiled ms", "speedup",
                              "quartiles", "compile"]))
        print("dry run: eager and compiled steps ran on the CPU; nothing saved")
        return
    cases = []
    if args.cpu_rounds:
        cases.append(case("resnet20", 128, 32, 10, torch.device("cpu"), "none", args.cpu_rounds,
                          args.modes))
    if torch.cuda.is_available():
        cases.append(case("resnet50", args.gpu_batch, args.gpu_resolution, 1000,
                          torch.device("cuda"), "bf16", args.gpu_rounds, args.modes))
    name = "bench_compile_" + ("cuda" if torch.cuda.is_available() else "cpu")
    path = save_result(name, {"cases": cases})
    print(table([r for c in cases for r in rows(c)],
                ["case", "method", "mode", "eager ms", "compiled ms", "speedup", "quartiles",
                 "compile"]))
    for c in cases:
        ratios = ", ".join(f"{k} {v:.3f}" for k, v in c["cram_over_sgd"].items())
        print(f"{c['model']}: CrAM+ / SGD step time: {ratios}; recompiles while timed: "
              f"{c['recompiles_while_timed']}")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
