"""Training-step throughput of SGD, SAM, CrAM+ global and CrAM+ N:M, through the trainer's TrainStep.

CPU: ResNet-20, batch 128, 32 px. With CUDA also ResNet-50 (default batch 128, 224 px), bf16,
channels_last, data resident on the GPU, with peak memory per method. Methods are timed in
interleaved rounds; ratios are medians of per-round ratios to SGD.
`--sync-check N` also runs N CrAM+ steps (global and N:M) under
`torch.cuda.set_sync_debug_mode("error")`: the fused step must not wait for the host once.
Targets: CrAM+ step time <= 2.05x SGD (CPU and GPU); peak GPU memory <= 1.25x SGD; no sync.
"""
import argparse
import copy

import torch

from ffcv_cram.models import get_model
from ffcv_cram.train.optimizer_options import OptimizerOptions
from ffcv_cram.train.step import TrainStep, make_optimizer

from common import interleaved, ratio_stats, save_result, table

METHODS = {"sgd": "sgd", "sam": "sam", "cram+ global": "cram", "cram+ n:m": "cram_nm"}


def build(method, base, amp, device):
    model = copy.deepcopy(base)
    opt = make_optimizer(model.parameters(), OptimizerOptions(
        method=method, lr=0.1, momentum=0.9, weight_decay=1e-4, rho=0.05,
        sparsities=(0.5, 0.7, 0.9)))
    return TrainStep(model, opt, method, amp, device=device)


def case(name, batch, res, classes, device, amp, rounds, methods=tuple(METHODS)):
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as the trainer
    base = get_model(name, classes).to(device, memory_format=torch.channels_last).train()
    x = torch.randn(batch, 3, res, res, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    steps, memory = {}, {}
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    for label in methods:
        step = build(METHODS[label], base, amp, device)
        if device.type == "cuda":  # peak memory of this method alone, after a warm-up step
            step(x, y)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            step(x, y)
            torch.cuda.synchronize()
            memory[label] = torch.cuda.max_memory_allocated()
        steps[label] = (lambda s=step: s(x, y))
    times = interleaved(steps, rounds, sync=sync)
    stats = ratio_stats(times, "sgd")
    for label, s in stats.items():
        s["images_per_s"] = batch / s["median_s"]
        if memory:
            s["peak_memory_bytes"] = memory[label]
            s["memory_ratio"] = memory[label] / memory["sgd"]
    return {"model": name, "device": str(device), "batch": batch, "resolution": res, "amp": amp,
            "rounds": rounds, "times_s": times, "methods": stats}


def sync_check(method, steps, batch, res, device, model="resnet50", amp="bf16"):
    """Run `steps` steps under sync debug mode "error" after two warm-up steps (layout tables,
    cuDNN autotuning and Triton compilation happen there). Returns what was seen."""
    torch.manual_seed(0)
    base = get_model(model, 1000).to(device, memory_format=torch.channels_last).train()
    x = torch.randn(batch, 3, res, res, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)
    step = build(METHODS[method], base, amp, device)
    cuda = device.type == "cuda"  # on the CPU (--dry-run) only the code path is exercised
    for _ in range(2):
        step(x, y)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    out = {"method": method, "steps": steps, "fused": bool(getattr(step.optimizer, "_fused", False))}
    try:
        for _ in range(steps):
            step(x, y)
        out["host_syncs"] = 0
    except RuntimeError as err:
        out["host_syncs"] = ">= 1"
        out["error"] = str(err).splitlines()[0]
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-rounds", type=int, default=40, help="0: no CPU case")
    parser.add_argument("--gpu-rounds", type=int, default=50)
    parser.add_argument("--gpu-batch", type=int, default=128)
    parser.add_argument("--gpu-resolutions", type=int, nargs="+", default=[224])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--sync-check", type=int, default=0, metavar="N",
                        help="N CrAM+ steps per method under sync debug mode 'error' (CUDA)")
    parser.add_argument("--dry-run", action="store_true",
                        help="the GPU case's code on the CPU, tiny (a check of the script)")
    args = parser.parse_args()
    if "sgd" not in args.methods:
        parser.error("--methods must include sgd (the ratios are to SGD)")
    if args.dry_run:
        cpu = torch.device("cpu")
        cases = [case("resnet20", 2, 32, 1000, cpu, "none", 1, args.methods)]
        syncs = [sync_check(m, 1, 2, 32, cpu, "resnet20", "none")
                 for m in ("cram+ global", "cram+ n:m")]
        print(f"dry run: {len(cases[0]['methods'])} methods and {len(syncs)} sync checks ran on "
              "the CPU; nothing timed")
        return
    cases = []
    if args.cpu_rounds:
        cases.append(case("resnet20", 128, 32, 10, torch.device("cpu"), "none", args.cpu_rounds,
                          args.methods))
    syncs = []
    if torch.cuda.is_available():
        for res in args.gpu_resolutions:
            cases.append(case("resnet50", args.gpu_batch, res, 1000, torch.device("cuda"), "bf16",
                              args.gpu_rounds, args.methods))
        if args.sync_check:
            syncs = [sync_check(m, args.sync_check, args.gpu_batch, min(args.gpu_resolutions),
                                torch.device("cuda")) for m in ("cram+ global", "cram+ n:m")]
    rows = []
    for c in cases:
        for label, s in c["methods"].items():
            rows.append([f"{c['model']} {c['resolution']}px b{c['batch']}", c["device"], label,
                         f"{s['images_per_s']:,.0f}",
                         f"{s['ratio']:.3f}", "{:.3f}-{:.3f}".format(*s["ratio_quartiles"]),
                         f"{s.get('memory_ratio', float('nan')):.3f}"])
    name = "bench_train_step_" + ("cuda" if torch.cuda.is_available() else "cpu")
    path = save_result(name, {"cases": cases, "sync_check": syncs,
                              "targets": {"time_ratio": 2.05, "memory_ratio": 1.25, "host_syncs": 0}})
    print(table(rows, ["model", "device", "method", "img/s", "time / SGD", "quartiles",
                       "peak mem / SGD"]))
    for s in syncs:
        print(f"sync check, {s['method']} (fused step: {s['fused']}): {s['steps']} steps, host "
              f"syncs {s['host_syncs']}" + (f" -- {s['error']}" if "error" in s else ""))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
