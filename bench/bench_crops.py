"""The decode='gpu' crop + resize of one batch: all crops at once vs chunked by a byte budget.

`gpu_augment.resized_crops` pads the crops it resizes together to the largest of them. All at
once, a batch of full-size photos (a .beton written with max_resolution=0) needs tens of GB;
chunked (default budget `WORK_BYTES`) the working memory stays near the budget. Cases: an
ImageNet-like batch (stored images of 300-500 px, as ffcv-imagenet writes them) and a batch of
full-size photos (1200-2000 px), RandomResizedCrop boxes and flips, output 224 px. Measured:
median time per batch and peak memory above the inputs (CUDA: the allocator's peak; CPU: the
planned bytes of the largest chunk). On the CPU the batches are smaller (--cpu-batch).
"""
import argparse

import numpy as np
import torch

from ffcv_cram.data.gpu_augment import WORK_BYTES, chunk_bytes, crop_chunks, resized_crops
from ffcv_cram.data.seeded_crops import random_crops_and_flips

from common import median_time, save_result, table


def make_batch(n, low, high, device, rng):
    long_side = rng.integers(low, high + 1, n)
    short_side = (long_side * rng.uniform(0.6, 1.0, n)).astype(np.int64)
    portrait = rng.random(n) < 0.3
    heights = np.where(portrait, long_side, short_side)
    widths = np.where(portrait, short_side, long_side)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, device=device)
              for h, w in zip(heights, widths)]
    seed = int(rng.integers(2**63))
    return (images, *random_crops_and_flips(seed, 0, np.arange(n), heights, widths))


def measure(images, boxes, flips, size, budget, device, repeats):
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else None
    fn = lambda: resized_crops(images, boxes, size, flips, budget)  # noqa: E731
    result = fn()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        chunks = crop_chunks(boxes[:, 2], boxes[:, 3], size, budget)
        peak = max(chunk_bytes(len(c), boxes[c, 2].max(), boxes[c, 3].max(), size) for c in chunks)
    seconds, _ = median_time(fn, repeats, warmup=1, sync=sync)
    chunks = len(crop_chunks(boxes[:, 2], boxes[:, 3], size, budget))
    return result, {"seconds": seconds, "peak_bytes": int(peak), "chunks": chunks}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--cpu-batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n = args.batch if device.type == "cuda" else args.cpu_batch
    rng = np.random.default_rng(0)
    cases, rows = [], []
    for name, low, high in (("imagenet-like (300-500 px)", 300, 500),
                            ("full-size (1200-2000 px)", 1200, 2000)):
        images, boxes, flips = make_batch(n, low, high, device, rng)
        whole, at_once = measure(images, boxes, flips, args.size, 2**62, device, args.repeats)
        chunked, by_budget = measure(images, boxes, flips, args.size, WORK_BYTES, device,
                                     args.repeats)
        diff = float((whole - chunked).abs().max())
        del whole, chunked, images
        case = {"name": name, "batch": n, "all_at_once": at_once, "chunked": by_budget,
                "max_abs_difference": diff, "time_ratio": by_budget["seconds"] / at_once["seconds"]}
        cases.append(case)
        for method, r in (("all at once", at_once), (f"chunked ({WORK_BYTES >> 20} MiB)", by_budget)):
            rows.append([name, method, r["chunks"], f"{r['seconds'] * 1e3:.1f}",
                         f"{r['peak_bytes'] / 2**20:,.0f}", f"{diff:.1e}"])
        if device.type == "cuda":
            torch.cuda.empty_cache()
    path = save_result(f"bench_crops_{device.type}", {
        "size": args.size, "budget_bytes": WORK_BYTES, "peak_measure": "cuda allocator peak"
        if device.type == "cuda" else "planned bytes of the largest chunk", "cases": cases})
    print(table(rows, ["batch", "method", "chunks", "ms / batch", "peak MiB", "max |diff|"]))
    for case in cases:
        print(f"{case['name']}: chunked / all at once time {case['time_ratio']:.2f}x")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
