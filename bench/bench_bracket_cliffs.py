"""The bracket select's cliffs on a GPU (issue 30): a mask's cost with the current defaults, and
what a miss or a tie pattern costs against the radix path.

1. Mask time over ResNet-50's prunable weights (channels_last, Gaussian): the default (the
   bracket select) and the radix passes at s = 0.5 / 0.7 / 0.9, medians of queued CUDA-event
   times (device time), three weight sets in turn.
2. Cliffs at s = 0.5 on the same shapes: a forced miss (Gaussian weights), all zero, all equal,
   a partial tie of 10 % of the weights at the threshold, weights already 90 % sparse (exact
   zeros: a pruned checkpoint) -- the bracket's time, the radix path's on the same weights and on
   Gaussian ones (its usual cost), the ratios (target <= 2x), misses, and masks equal to radix.
3. Misses over 300 real CrAM+ first halves (perturb + select, real gradients times a random
   scale), 100 each at s = 0.5 / 0.7 / 0.9: expected 0.

Needs CUDA. `--dry-run` runs it on a tiny net in Triton's CPU interpreter (one call each, a check
of the script: nothing timed, nothing saved).
"""
import argparse
import json
import sys
import time

import torch
import torchvision

from ffcv_cram.kernels.triton_bracket import BLOCK, _PARTIAL
from ffcv_cram.kernels.triton_select import bracket_plan, layout, select
from ffcv_cram.sparsity.masks import prunable_weights, selection_groups

from common import require_interpreter, save_result, table
from topk_checks import SPARSITIES, FirstHalf, clone, forward_backward
from topk_timing import Clock, bracket_health, median

CLIFF_SPARSITY = 0.5
RATIO_TARGET = 2.0


def tiny_net():
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3),
                         nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 10))


def cliff_weights(weights, seed=0):
    """name -> weights shaped (and strided) like `weights`: each pattern that once missed."""
    g = torch.Generator(device=weights[0].device).manual_seed(seed)
    gauss = [torch.randn(w.shape, generator=g, device=w.device).to(
        memory_format=torch.channels_last if w.dim() == 4 else torch.contiguous_format)
        for w in weights]
    flat = torch.cat([w.reshape(-1) for w in gauss]).abs()
    n = flat.numel()
    sorted_keys = flat.sort().values
    middle = float(sorted_keys[n // 2])  # 10 % of the weights around the median: one magnitude
    band = (float(sorted_keys[int(n * 0.45)]), float(sorted_keys[int(n * 0.55)]))
    pruned_at = float(sorted_keys[int(n * 0.9)])

    def tied(w):
        inside = (w.abs() >= band[0]) & (w.abs() <= band[1])
        return torch.where(inside, w.sign() * middle, w)
    return {
        "forced miss": gauss,
        "all zero": [torch.zeros_like(w) for w in gauss],
        "all equal": [torch.full_like(w, -0.375) for w in gauss],
        "10% tied at the threshold": [tied(w) for w in gauss],
        "90% sparse at 50%": [torch.where(w.abs() < pruned_at, w * 0.0, w) for w in gauss],
    }


def mask_times(weight_sets, clock, repeats, sparsities):
    """Queued medians of the default (bracket) and the radix masks, weight sets in turn."""
    outs = [[torch.empty_like(w, dtype=torch.bool) for w in ws] for ws in weight_sets]
    turn = [0]
    rows = []
    for sparsity in sparsities:
        groups, counts = selection_groups(weight_sets[0], sparsity, "global")

        def call(method):
            def run():
                i = turn[0] = (turn[0] + 1) % len(weight_sets)
                select(weight_sets[i], groups, counts, outs[i], False, method=method)
            return run
        row = {"sparsity": sparsity}
        for method in ("auto", "radix"):
            row[f"{'bracket' if method == 'auto' else method}_s"] = median(
                clock.queued(call(method), repeats, label=f"{method} s={sparsity}"))
        rows.append(row)
    return rows


def cliffs(weights, clock, repeats, gauss_radix_s):
    """Each pattern at CLIFF_SPARSITY: bracket vs radix time, misses, masks equal."""
    groups, counts = selection_groups(weights, CLIFF_SPARSITY, "global")
    space = bracket_plan(layout(weights, groups, BLOCK), weights, groups,
                         weights[0].device).workspace
    rows = []
    for name, ws in cliff_weights(weights).items():
        force = name == "forced miss"
        bracket_masks = [torch.empty_like(w, dtype=torch.bool) for w in ws]
        radix_masks = [torch.empty_like(w, dtype=torch.bool) for w in ws]
        before, calls = int(space.misses), [0]

        def bracket():
            calls[0] += 1
            select(ws, groups, counts, bracket_masks, False, method="bracket", force_miss=force)
        bracket_s = median(clock.queued(bracket, repeats, label=name))
        misses = int(space.misses) - before
        partial = bool(space.state[_PARTIAL])
        radix_s = median(clock.queued(
            lambda: select(ws, groups, counts, radix_masks, False, method="radix"), repeats,
            label=f"{name} radix"))
        equal = all(torch.equal(a, b) for a, b in zip(bracket_masks, radix_masks))
        rows.append({"pattern": name, "bracket_s": bracket_s, "radix_s": radix_s,
                     "over_radix": bracket_s / radix_s,
                     "over_gaussian_radix": bracket_s / gauss_radix_s,
                     "misses": misses, "calls": calls[0], "partial_tie": partial,
                     "masks_equal_radix": equal})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per measurement")
    parser.add_argument("--halves", type=int, default=300,
                        help="real CrAM+ first halves counted for misses (split over 3 sparsities)")
    parser.add_argument("--batch", type=int, default=64, help="batch of the real gradients")
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny net, Triton's CPU interpreter, one call each: checks the script")
    args = parser.parse_args()
    if args.dry_run:
        require_interpreter("--dry-run")
        device, arch, classes = torch.device("cpu"), tiny_net, 10
        args.repeats, args.halves, args.batch, resolution = 1, 3, 4, 16
    elif not torch.cuda.is_available():
        sys.exit("error: bench_bracket_cliffs.py needs a CUDA GPU (for a script check on the "
                 "CPU: TRITON_INTERPRET=1 python bench/bench_bracket_cliffs.py --dry-run)")
    else:
        device, arch, classes, resolution = torch.device("cuda"), torchvision.models.resnet50, \
            1000, 224
    started = time.perf_counter()
    torch.manual_seed(0)
    base = arch().to(device).to(memory_format=torch.channels_last).train()
    weights = [p.detach() for _, _, p in prunable_weights(base)]
    clock = Clock(device)
    result = {"numel": sum(w.numel() for w in weights), "tensors": len(weights),
              "repeats": args.repeats, "dry_run": args.dry_run, "ratio_target": RATIO_TARGET}

    print("1. mask time, default vs radix ...", flush=True)
    weight_sets = [weights] + [[w.clone() for w in weights] for _ in range(2)]
    timed = SPARSITIES if clock.cuda else (0.9,)
    result["masks"] = mask_times(weight_sets, clock, args.repeats, timed)
    del weight_sets
    gauss_radix = next((r["radix_s"] for r in result["masks"] if r["sparsity"] == 0.5),
                       result["masks"][0]["radix_s"])

    print("2. cliffs: forced miss and tie patterns vs radix ...", flush=True)
    result["cliffs"] = cliffs(weights, clock, args.repeats, gauss_radix)

    print(f"3. misses over {args.halves} real CrAM+ first halves ...", flush=True)
    x = torch.randn(args.batch, 3, resolution, resolution, device=device).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, classes, (args.batch,), device=device)
    model, size, grad_sets = clone(base), max(args.batch // 4, 1), []
    for k in range(4):
        model.zero_grad()
        forward_backward(model, x[k * size:(k + 1) * size], y[k * size:(k + 1) * size])
        grad_sets.append([p.grad.clone() for p in model.parameters()])
    first_half = FirstHalf(model, grad_sets[0])
    health = bracket_health(first_half, grad_sets, -(-args.halves // len(SPARSITIES)), 90,
                            SPARSITIES)
    result["health"] = health
    result["halves"] = sum(h["calls"] for h in health)
    result["misses"] = sum(h["misses"] for h in health)
    result["launch_bound_timings"] = clock.launch_bound
    result["seconds"] = round(time.perf_counter() - started, 1)
    json.dumps(result)  # (a dry run checks that the result serialises, too)

    ms = lambda s: f"{s * 1e3:.3f}"  # noqa: E731
    print(table([[r["sparsity"], ms(r["bracket_s"]), ms(r["radix_s"])] for r in result["masks"]],
                ["s", "default (bracket) ms", "radix ms"]))
    print(table([[r["pattern"], ms(r["bracket_s"]), ms(r["radix_s"]), f"{r['over_radix']:.2f}",
                  f"{r['over_gaussian_radix']:.2f}", f"{r['misses']}/{r['calls']}",
                  r["partial_tie"], r["masks_equal_radix"]] for r in result["cliffs"]],
                [f"s={CLIFF_SPARSITY}", "bracket ms", "radix ms", "x radix",
                 "x Gaussian radix", "misses", "partial tie", "equal"]))
    print(f"misses over {result['halves']} real first halves: {result['misses']}")
    if not all(r["masks_equal_radix"] for r in result["cliffs"]):
        sys.exit("error: a pattern's bracket masks differ from the radix masks (see the table)")
    if args.dry_run:
        print("dry run (interpreter, tiny net): a check of the script, nothing saved")
    else:
        print(f"saved {save_result('bench_bracket_cliffs_cuda', result)}")


if __name__ == "__main__":
    main()
