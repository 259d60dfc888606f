"""Global magnitude masks over ResNet-50's prunable weights (25,502,912): ours vs the reference.

Reference approach: concatenate all |w|, torch.topk(sorted=True) for the threshold, float32 masks.
Ours: `magnitude_masks` (exact radix select; numba kernels on the CPU, and the plain torch path).
Also checks that ours prunes exactly round(s * n). Target on the CPU: ours >= 3x faster.
"""
import argparse
import os

import torch
import torchvision

from ffcv_cram.sparsity.masks import magnitude_masks, prunable_weights, prune_count

from common import median_time, save_result, table
from reference_cram import reference_masks


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    torch.manual_seed(0)
    weights = [p.detach().to(device) for _, _, p in prunable_weights(torchvision.models.resnet50())]
    n = sum(w.numel() for w in weights)
    assert n == 25_502_912, n
    outs = [torch.empty_like(w, dtype=torch.bool) for w in weights]

    def ours(kernels):
        def run():
            os.environ["FFCV_CRAM_KERNELS"] = kernels
            return magnitude_masks(weights, sparsity, "global", out=outs)
        return run

    rows, cases = [], []
    for sparsity in (0.5, 0.7, 0.9):
        t_ref, _ = median_time(lambda: reference_masks(weights, sparsity), args.repeats, sync=sync)
        t_ours, _ = median_time(ours("1"), args.repeats, sync=sync)
        pruned = sum(int((~m).sum()) for m in ours("1")())
        t_torch, _ = median_time(ours("0"), args.repeats, sync=sync)
        pruned_torch = sum(int((~m).sum()) for m in ours("0")())
        ref_pruned = sum(int((m == 0).sum()) for m in reference_masks(weights, sparsity))
        exact = prune_count(n, sparsity)
        assert pruned == pruned_torch == exact, (pruned, pruned_torch, exact)
        cases.append(dict(sparsity=sparsity, reference_s=t_ref, ours_s=t_ours, ours_torch_path_s=t_torch,
                          speedup=t_ref / t_ours, speedup_torch_path=t_ref / t_torch,
                          pruned=pruned, exact_count=exact, reference_pruned=ref_pruned))
        rows.append([sparsity, f"{t_ref * 1e3:.1f}", f"{t_ours * 1e3:.1f}", f"{t_torch * 1e3:.1f}",
                     f"{t_ref / t_ours:.1f}x", f"{t_ref / t_torch:.1f}x", f"{pruned:,}", f"{ref_pruned:,}"])
    os.environ.pop("FFCV_CRAM_KERNELS", None)
    path = save_result(f"bench_masks_{device.type}", {"device": str(device), "numel": n,
                                                      "repeats": args.repeats, "cases": cases})
    print(table(rows, ["sparsity", "reference ms", "ours ms", "ours (torch path) ms", "speedup",
                       "speedup (torch path)", "pruned (ours = round(s n))", "pruned (reference)"]))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
