"""Time per training step: CrAM+ (global, {0.5, 0.7, 0.9}) vs SGD, measured side by side.

ResNet-20 (batch 128, 32 px) and ResNet-50 (batch 16, 160 px) on the CPU, channels_last, fp32.
The methods take one step each per round, in turn, so drift on a shared machine hits them alike;
the figure is the median over rounds of each round's ratio to SGD (with its quartiles). Also timed:
the bare two-pass floor (both forward/backward passes and the SGD update, no CrAM work) and the
reference implementation's approach to the CrAM+ step.
Target: CrAM+ / SGD <= 2.05 on both models (two passes make 2.0 the floor).
"""
import argparse
import copy


import torch
from torch import nn

from ffcv_cram import TopkCrAM, disable_running_stats, enable_running_stats
from ffcv_cram.models import get_model

from common import interleaved, median_time, ratio_stats, save_result, table
from reference_cram import ReferenceStyleCrAM

CASES = {"resnet20": (128, 32, 10), "resnet50": (16, 160, 1000)}
SGD = dict(lr=0.1, momentum=0.9, weight_decay=1e-4)


def optimizer_overhead(model, x, y, repeats):
    """Median time of CrAM's own work in one step: both half-steps minus the base SGD update."""
    opt = TopkCrAM(model.parameters(), torch.optim.SGD, rho=0.05, sparsities=(0.5, 0.7, 0.9), **SGD)
    nn.CrossEntropyLoss()(model(x), y).backward()

    def halves():
        opt.first_step()
        opt.second_step()
    both, _ = median_time(halves, repeats)
    base, _ = median_time(opt.base_optimizer.step, repeats)
    return both - base


def make_step(kind, model, x, y):
    criterion = nn.CrossEntropyLoss()
    if kind in ("sgd", "two-pass floor"):
        opt = torch.optim.SGD(model.parameters(), **SGD)
    elif kind == "cram+":
        opt = TopkCrAM(model.parameters(), torch.optim.SGD, rho=0.05, sparsities=(0.5, 0.7, 0.9), **SGD)
    else:
        opt = ReferenceStyleCrAM(model.parameters(), rho=0.05, **SGD)

    def step():
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        if kind == "sgd":
            opt.step()
            return
        if kind == "two-pass floor":
            disable_running_stats(model)
            opt.zero_grad()
            criterion(model(x), y).backward()
            enable_running_stats(model)
            opt.step()
            return

        def closure():
            criterion(model(x), y).backward()
        disable_running_stats(model)
        opt.step(closure)
        enable_running_stats(model)
    return step


def run_case(name, rounds, kinds):
    batch, res, classes = CASES[name]
    torch.manual_seed(0)
    base = get_model(name, classes).to(memory_format=torch.channels_last).train()
    x = torch.randn(batch, 3, res, res).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,))
    times = interleaved({k: make_step(k, copy.deepcopy(base), x, y) for k in kinds}, rounds)
    overhead = optimizer_overhead(copy.deepcopy(base), x, y, repeats=20)
    stats = ratio_stats(times, "sgd")
    return {"model": name, "batch": batch, "resolution": res, "rounds": rounds, "times_s": times,
            "median_s": {k: v["median_s"] for k, v in stats.items()},
            "ratio_to_sgd": {k: v["ratio"] for k, v in stats.items()},
            "ratio_quartiles": {k: v["ratio_quartiles"] for k, v in stats.items()},
            "ratio_of_totals": {k: v["ratio_of_totals"] for k, v in stats.items()},
            "optimizer_overhead_s": overhead,
            "optimizer_overhead_fraction_of_sgd_step": overhead / stats["sgd"]["median_s"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,resnet50")
    parser.add_argument("--rounds", type=int, default=0, help="default: 60 for ResNet-20, 8 for ResNet-50")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference-style step")
    args = parser.parse_args()
    kinds = ["sgd", "two-pass floor", "cram+"] + ([] if args.no_reference else ["reference cram+"])
    results = []
    for name in args.models.split(","):
        rounds = args.rounds or (60 if name == "resnet20" else 8)
        results.append(run_case(name, rounds, kinds))
    rows = [[r["model"], k, f"{r['median_s'][k] * 1e3:.1f}", f"{r['ratio_to_sgd'][k]:.3f}",
             "{:.3f}-{:.3f}".format(*r["ratio_quartiles"][k]), f"{r['ratio_of_totals'][k]:.3f}"]
            for r in results for k in kinds]
    path = save_result("bench_step_cpu", {"target_ratio": 2.05, "cases": results})
    print(table(rows, ["model", "method", "ms/step (median)", "ratio to SGD (median)",
                       "ratio quartiles", "ratio of totals"]))
    for r in results:
        print(f"{r['model']}: CrAM+ optimizer-side work {r['optimizer_overhead_s'] * 1e3:.1f} ms/step "
              f"= {100 * r['optimizer_overhead_fraction_of_sgd_step']:.1f}% of an SGD step")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
