"""Training-step throughput of SGD, SAM, CrAM+ global and CrAM+ N:M, through the trainer's TrainStep.

CPU: ResNet-20, batch 128, 32 px (always). With CUDA also ResNet-50, batch 128, 224 px, bf16,
channels_last, data resident on the GPU, with peak memory per method. Methods are timed in
interleaved rounds; ratios are medians of per-round ratios to SGD.
Targets: CrAM+ step time <= 2.05x SGD (CPU and GPU); peak GPU memory <= 1.25x SGD.
"""
import argparse
import copy

import torch

from ffcv_cram.models import get_model
from ffcv_cram.train.step import TrainStep, make_optimizer

from common import interleaved, ratio_stats, save_result, table

METHODS = {"sgd": "sgd", "sam": "sam", "cram+ global": "cram", "cram+ n:m": "cram_nm"}


def build(method, base, amp, device):
    model = copy.deepcopy(base)
    opt = make_optimizer(method, model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4,
                         rho=0.05, sparsities=(0.5, 0.7, 0.9))
    return TrainStep(model, opt, method, amp, device=device)


def case(name, batch, res, classes, device, amp, rounds):
    torch.manual_seed(0)
    base = get_model(name, classes).to(device, memory_format=torch.channels_last).train()
    x = torch.randn(batch, 3, res, res, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    steps, memory = {}, {}
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    for label, method in METHODS.items():
        step = build(method, base, amp, device)
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-rounds", type=int, default=40)
    parser.add_argument("--gpu-rounds", type=int, default=50)
    args = parser.parse_args()
    cases = [case("resnet20", 128, 32, 10, torch.device("cpu"), "none", args.cpu_rounds)]
    if torch.cuda.is_available():
        cases.append(case("resnet50", 128, 224, 1000, torch.device("cuda"), "bf16", args.gpu_rounds))
    rows = []
    for c in cases:
        for label, s in c["methods"].items():
            rows.append([c["model"], c["device"], label, f"{s['images_per_s']:,.0f}",
                         f"{s['ratio']:.3f}", "{:.3f}-{:.3f}".format(*s["ratio_quartiles"]),
                         f"{s.get('memory_ratio', float('nan')):.3f}"])
    name = "bench_train_step_" + ("cuda" if torch.cuda.is_available() else "cpu")
    path = save_result(name, {"cases": cases, "targets": {"time_ratio": 2.05, "memory_ratio": 1.25}})
    print(table(rows, ["model", "device", "method", "img/s", "time / SGD", "quartiles",
                       "peak mem / SGD"]))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
