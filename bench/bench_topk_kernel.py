"""The fused top-k masking CrAM step on a GPU: correctness first, then timings.

1. Checks: over ResNet-50's prunable weights (channels_last), Triton masks equal the torch path bit
   for bit at sparsity 0.5/0.7/0.9 (global and uniform) and for 2:4 / 4:8, prune exactly round(s n),
   and one whole CrAM+ step through the fused path equals the torch path.
2. Mask selection, median of CUDA-event timings: (a) the reference approach (cat + sorted topk +
   float masks), (b) our torch path, (c) the Triton kernels; the bandwidth floor = bytes that must
   move (read |w| once, write a bool mask) / measured device-to-device copy bandwidth.
3. The optimizer-side overhead of one CrAM+ step (everything but the two forward/backward passes:
   first_step + second_step incl. the SGD update) vs the whole step, ResNet-50, batch 128, 224 px,
   bf16 autocast, channels_last; fused vs torch path.
Targets on one H200: (c) <= 3x the floor and >= 20x faster than (a); overhead < 2% of the step.

Needs CUDA. Without it, `TRITON_INTERPRET=1 python bench/bench_topk_kernel.py --smoke` runs the
same code on tiny inputs on the CPU (a check of the script, not a measurement).
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torchvision

from ffcv_cram import TopkCrAM
from ffcv_cram.sparsity.masks import magnitude_masks, nm_masks, prunable_weights, prune_count

from common import save_result, table
from reference_cram import reference_masks

SGD = dict(lr=0.1, momentum=0.9, weight_decay=5e-5)
SPARSITIES = (0.5, 0.7, 0.9)


def event_median(fn, repeats, warmup=3, device="cuda"):
    """Median seconds of fn() between CUDA events (wall clock around a sync on the CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            import time
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device, repeats, numel):
    """Bytes read + written per second by a large device-to-device copy."""
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    seconds = event_median(lambda: dst.copy_(src), repeats, device=device.type)
    return 2 * src.numel() * 4 / seconds


def model_weights(model):
    return [p.detach() for _, _, p in prunable_weights(model)]


def check_masks(weights):
    n = sum(w.numel() for w in weights)
    for sparsity in SPARSITIES:
        for scope in ("global", "uniform"):
            expected = magnitude_masks(weights, sparsity, scope, kernels=False)
            got = magnitude_masks(weights, sparsity, scope, kernels=True)
            assert all(torch.equal(a, b) for a, b in zip(expected, got)), (sparsity, scope)
        pruned = sum(int((~m).sum()) for m in got)
        assert pruned == sum(prune_count(w.numel(), sparsity) for w in weights)
        pruned = sum(int((~m).sum()) for m in magnitude_masks(weights, sparsity, kernels=True))
        assert pruned == prune_count(n, sparsity), (pruned, prune_count(n, sparsity))
    for n_, m_ in ((2, 4), (4, 8)):
        for a, b in zip(nm_masks(weights, n_, m_, kernels=False), nm_masks(weights, n_, m_, kernels=True)):
            assert (a is None) == (b is None) and (a is None or torch.equal(a, b))


def check_step(base, x, y):
    results = []
    for kernels in (False, True):
        model = clone(base)
        opt = TopkCrAM(model.parameters(), torch.optim.SGD, kernels=kernels, **SGD)
        for _ in range(2):
            train_step(model, opt, x, y)
        results.append(model.state_dict())
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0]), "fused step differs"


def clone(model):
    import copy
    return copy.deepcopy(model)


def forward_backward(model, x, y):
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()


def train_step(model, opt, x, y):
    forward_backward(model, x, y)
    opt.first_step(zero_grad=True)
    forward_backward(model, x, y)
    opt.second_step(zero_grad=True)


def time_masks(weight_sets, repeats, device):
    """(a), (b), (c) per sparsity; weight sets rotate so no run reads a cached copy."""
    outs = [[torch.empty_like(w, dtype=torch.bool) for w in ws] for ws in weight_sets]
    # the reference flattens with .view: it gets contiguous (not channels_last) copies
    contiguous = [[w.contiguous() for w in ws] for ws in weight_sets]
    turn = [0]

    def rotating(fn, sets=weight_sets):
        def run():
            i = turn[0] = (turn[0] + 1) % len(sets)
            fn(sets[i], outs[i])
        return run
    rows = []
    for sparsity in SPARSITIES:
        row = {"sparsity": sparsity}
        row["reference_s"] = event_median(
            rotating(lambda w, o: reference_masks(w, sparsity), contiguous), repeats, device=device)
        row["torch_path_s"] = event_median(rotating(
            lambda w, o: magnitude_masks(w, sparsity, out=o, kernels=False)), repeats, device=device)
        row["kernels_s"] = event_median(rotating(
            lambda w, o: magnitude_masks(w, sparsity, out=o, kernels=True)), repeats, device=device)
        rows.append(row)
    return rows


def where_time_goes(weights, sparsity, device, calls=5):
    """For one fused masks call: the host time to issue it (the GPU idle beforehand), and the
    device time of each kernel (torch.profiler), to tell launch-bound from GPU-bound."""
    out = [torch.empty_like(w, dtype=torch.bool) for w in weights]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    run = lambda: magnitude_masks(weights, sparsity, out=out, kernels=True)  # noqa: E731
    run()
    host = []
    for _ in range(calls):
        sync()
        start = time.perf_counter()
        run()
        host.append(time.perf_counter() - start)
    sync()
    result = {"sparsity": sparsity, "host_s": statistics.median(host)}
    if device == "cuda":
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                run()
            sync()
        per_kernel = {}
        for event in prof.key_averages():
            total = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
            if total > 0:
                per_kernel[event.key] = total / calls
        result["device_us_per_call"] = dict(sorted(per_kernel.items(), key=lambda kv: -kv[1]))
    return result


def time_step_overhead(base, x, y, repeats, device):
    """Whole CrAM+ step, and first_step + second_step alone (on fixed gradients), per path."""
    out = {}
    for name, kernels in (("fused", True), ("torch path", False)):
        model = clone(base)
        opt = TopkCrAM(model.parameters(), torch.optim.SGD, kernels=kernels, **SGD)
        out[name] = {"step_s": event_median(lambda: train_step(model, opt, x, y), repeats,
                                            device=device)}
        forward_backward(model, x, y)
        grads = [p.grad.clone() for p in model.parameters()]

        def optimizer_side():
            for p, g in zip(model.parameters(), grads):
                p.grad = g  # what the second pass hands over (first_step(zero_grad) drops grads)
            opt.first_step(zero_grad=False)
            opt.second_step()
        out[name]["optimizer_side_s"] = event_median(optimizer_side, repeats, device=device)
        out[name]["sgd_update_s"] = event_median(opt.base_optimizer.step, repeats, device=device)
    return out


def tiny_net():
    """For --smoke: the interpreter runs every kernel program in Python, so keep it small."""
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3),
                         nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 10))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny CPU run under TRITON_INTERPRET=1: checks the script only")
    args = parser.parse_args()
    if args.smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            sys.exit("error: --smoke runs Triton in its CPU interpreter: set TRITON_INTERPRET=1")
        device, arch, classes = torch.device("cpu"), tiny_net, 10
        args.batch, args.resolution, args.repeats = 2, 16, 1
    elif not torch.cuda.is_available():
        sys.exit("error: bench_topk_kernel.py needs a CUDA GPU (for a script check on the CPU: "
                 "TRITON_INTERPRET=1 python bench/bench_topk_kernel.py --smoke)")
    else:
        device, arch, classes = torch.device("cuda"), torchvision.models.resnet50, 1000
    torch.manual_seed(0)
    base = arch().to(device).to(memory_format=torch.channels_last).train()
    x = torch.randn(args.batch, 3, args.resolution, args.resolution, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (args.batch,), device=device)

    weights = model_weights(base)
    n = sum(w.numel() for w in weights)
    check_masks(weights)
    check_step(base, x[:8], y[:8])
    print(f"checks passed: {len(weights)} tensors, {n:,} weights", flush=True)

    weight_sets = [weights] + [[w.clone() for w in weights] for _ in range(2)]
    bandwidth = copy_bandwidth(device, args.repeats, 1 << (28 if device.type == "cuda" else 20))
    floor_s = n * (4 + 1) / bandwidth
    masks = time_masks(weight_sets, args.repeats, device.type)
    breakdown = where_time_goes(weights, 0.9, device.type)
    overhead = time_step_overhead(base, x, y, 1 if args.smoke else max(10, args.repeats // 3),
                                  device.type)

    rows = [[m["sparsity"], f"{m['reference_s'] * 1e3:.3f}", f"{m['torch_path_s'] * 1e3:.3f}",
             f"{m['kernels_s'] * 1e3:.3f}", f"{floor_s * 1e3:.3f}",
             f"{m['kernels_s'] / floor_s:.2f}x", f"{m['reference_s'] / m['kernels_s']:.1f}x"]
            for m in masks]
    step_rows = [[name, f"{o['step_s'] * 1e3:.2f}", f"{o['optimizer_side_s'] * 1e3:.3f}",
                  f"{o['sgd_update_s'] * 1e3:.3f}", f"{100 * o['optimizer_side_s'] / o['step_s']:.2f}%"]
                 for name, o in overhead.items()]
    result = {
        "numel": n, "tensors": len(weights), "batch": args.batch, "resolution": args.resolution,
        "repeats": args.repeats, "copy_bandwidth_bytes_per_s": bandwidth,
        "floor_bytes": n * 5, "floor_s": floor_s, "masks": masks, "step": overhead,
        "fused_masks_breakdown": breakdown,
        "targets": {"kernels_over_floor": 3.0, "reference_over_kernels": 20.0,
                    "optimizer_side_fraction": 0.02}}
    print(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s (read + write); floor = {n * 5 / 1e6:.1f} MB")
    print(table(rows, ["sparsity", "(a) reference ms", "(b) torch path ms", "(c) kernels ms",
                       "floor ms", "(c)/floor", "(a)/(c)"]))
    print(table(step_rows, ["CrAM+ step", "whole step ms", "optimizer side ms", "of which SGD ms",
                            "optimizer side / step"]))
    kernels = breakdown.get("device_us_per_call", {})
    print(f"fused masks at s=0.9: {breakdown['host_s'] * 1e3:.3f} ms of host time to issue, "
          f"{sum(kernels.values()) / 1e3:.3f} ms of device time, of which:")
    print(table([[name[:60], f"{us:.1f}"] for name, us in list(kernels.items())[:12]],
                ["kernel", "us per call"]))
    if args.smoke:
        print("smoke run (interpreter, tiny model): a check of the script, nothing saved")
    else:
        print(f"saved {save_result('bench_topk_kernel_cuda', result)}")


if __name__ == "__main__":
    main()
