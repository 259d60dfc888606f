"""GPU time of one batch's crops: the fused Triton kernel against resized_crops + normalize.

The decode='gpu' work after decoding: `batch` generated uint8 images with sides of 300-500 px
(every third HWC, as nvImageCodec hands them, the others CHW, as torchvision's decoder),
RandomResizedCrop boxes and flips (`seeded_crops`), cropped, resized to `size` px, flipped,
normalised with ImageNet's mean / std and cast to bf16 channels_last. Both paths are timed with
CUDA events around one call, after a warm-up, in interleaved rounds, each round on the next of
several input sets (so no set's pixels stay in L2).

Before each call a sleep kernel holds the GPU while the host enqueues the call, so the events
bracket GPU work, not Python's launch overhead (which in training overlaps the model's work; it
is reported apart as host ms per call). Caveats: a host time above the ~20 ms sleep would leak
into the GPU time, and the reference waits for the GPU once (its blocking copy of the box sizes),
so the host gaps between its later launches still count. The kernel's table (`fill_table` into a
pinned buffer, one copy) is built before its events; the fill is timed apart. Reported: median GPU
ms per batch, the reference / kernel ratio, and the largest difference between the two (float32,
mean 0, std 1: the 0-255 scale).

`--dry-run`: on the CPU in Triton's interpreter with tiny sizes, checks kernel == reference
(float32 and bf16) instead of timing; nothing saved.
"""
import argparse
import os
import statistics
import sys
import time

if __name__ == "__main__" and "--dry-run" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton loads: kernels run on CPU tensors

import numpy as np
import torch

from ffcv_cram.data.seeded_crops import random_crops_and_flips
from ffcv_cram.data.triton_crops import (TABLE_COLUMNS, crop_resize_normalize, crops_reference,
                                         fill_table, kernel_usable)

from common import save_result, table

# ImageNet's, on the 0-255 scale (pipelines.IMAGENET_MEAN / STD; pipelines loads ffcv)
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
TOLERANCE = 1e-4  # max |kernel - reference|, float32, 0-255 scale: as tests/test_triton_crops.py
INPUT_SETS = 4
SLEEP_CYCLES = 40_000_000  # held before each timed call: ~20 ms at ~2 GHz, > either's host time


def make_inputs(batch, low, high, device, rng):
    """(images, boxes, flips): `batch` random images with sides in [low, high], every third HWC."""
    long_side = rng.integers(low, high + 1, batch)
    short_side = np.maximum((long_side * rng.uniform(0.6, 1.0, batch)).astype(np.int64), 1)
    portrait = rng.random(batch) < 0.3
    heights = np.where(portrait, long_side, short_side)
    widths = np.where(portrait, short_side, long_side)
    images = []
    for k, (h, w) in enumerate(zip(heights.tolist(), widths.tolist())):
        if k % 3 == 0:
            pixels = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, device=device)
            images.append(pixels.permute(2, 0, 1))
        else:
            images.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, device=device))
    boxes, flips = random_crops_and_flips(int(rng.integers(2**62)), 0, np.arange(batch), heights,
                                          widths)
    return images, boxes, flips


def device_table(images, boxes, flips, device):
    """The kernel's table, filled on the host (pinned on CUDA) and copied over."""
    host = torch.empty(len(images), TABLE_COLUMNS, dtype=torch.int64,
                       pin_memory=device.type == "cuda")
    fill_table(host, images, boxes, flips)
    return host.to(device, non_blocking=True)


def channels_last(shape, dtype, device):
    return torch.empty(shape, dtype=dtype, device=device).contiguous(
        memory_format=torch.channels_last)


def max_difference(inputs, size, device) -> float:
    """max |kernel - reference| in float32 with mean 0, std 1 (the 0-255 scale)."""
    images, boxes, flips = inputs
    zeros = torch.zeros(3, device=device)
    ones = torch.ones(3, device=device)
    out = channels_last((len(images), 3, size, size), torch.float32, device)
    crop_resize_normalize(device_table(images, boxes, flips, device), len(images), size, zeros,
                          ones, out)
    reference = crops_reference(images, boxes, flips, size, zeros, ones, torch.float32)
    return float((out - reference).abs().max())


def measure(device, batch: int, size: int, repeats: int) -> dict:
    """Median GPU ms per batch of the kernel and of resized_crops + normalize (bf16 channels_last
    out, 300-500 px images): CUDA events after a warm-up, the GPU held by a sleep kernel while each
    call is enqueued, interleaved rounds over INPUT_SETS input sets; the kernel's host-side table
    fill timed apart. Needs CUDA."""
    device = torch.device(device)
    if device.type != "cuda" or not kernel_usable(device):
        raise ValueError(f"measure times CUDA kernels; got device {device} "
                         f"(kernel usable: {kernel_usable(device)})")
    rng = np.random.default_rng(0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=device)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=device)
    sets = [make_inputs(batch, 300, 500, device, rng) for _ in range(INPUT_SETS)]
    tables = [device_table(*inputs, device) for inputs in sets]
    outs = [channels_last((batch, 3, size, size), torch.bfloat16, device) for _ in sets]

    def kernel(i):
        crop_resize_normalize(tables[i], batch, size, mean, std, outs[i])

    def reference(i):
        images, boxes, flips = sets[i]
        crops_reference(images, boxes, flips, size, mean, std, torch.bfloat16)

    methods = {"kernel": kernel, "reference": reference}
    for fn in methods.values():  # warm-up: compiles, cuBLAS handles, the allocator's pools
        for i in range(len(sets)):
            fn(i)
    torch.cuda.synchronize()
    events = {name: [] for name in methods}
    host_seconds = {name: [] for name in methods}
    for r in range(repeats):
        for name, fn in methods.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            # a sleeping GPU while the host enqueues the call: the events then bracket GPU work
            # only, not Python's launch overhead (which, in training, overlaps the model's work)
            torch.cuda._sleep(SLEEP_CYCLES)
            start.record()
            began = time.perf_counter()
            fn(r % len(sets))
            host_seconds[name].append(time.perf_counter() - began)
            end.record()
            events[name].append((start, end))
    torch.cuda.synchronize()
    ms = {name: [s.elapsed_time(e) for s, e in pairs] for name, pairs in events.items()}
    host_ms = {name: 1e3 * statistics.median(values) for name, values in host_seconds.items()}

    host = torch.empty(batch, TABLE_COLUMNS, dtype=torch.int64, pin_memory=True)
    fill_seconds = []
    for r in range(repeats):
        images, boxes, flips = sets[r % len(sets)]
        start = time.perf_counter()
        fill_table(host, images, boxes, flips)
        fill_seconds.append(time.perf_counter() - start)

    def summary(values):
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        return {"median_ms": float(median), "quartiles_ms": [float(q1), float(q3)]}

    ratios = [b / a for a, b in zip(ms["kernel"], ms["reference"])]
    return {"batch": batch, "size": size, "repeats": repeats, "input_sets": len(sets),
            "out": "bfloat16 channels_last", "kernel": summary(ms["kernel"]),
            "reference": summary(ms["reference"]), "host_ms_per_call": host_ms,
            "sleep_cycles_before_each_call": SLEEP_CYCLES,
            "reference_over_kernel": statistics.median(ratios),
            "fill_table_host_ms": 1e3 * statistics.median(fill_seconds),
            "max_abs_difference_0_255": max_difference(sets[0], size, device)}


def dry_run(batch: int, size: int) -> None:
    """Tiny sizes on the CPU, in the interpreter: kernel == reference, float32 and bf16."""
    device = torch.device("cpu")
    assert kernel_usable(device), "the dry run needs triton (and TRITON_INTERPRET=1)"
    inputs = make_inputs(batch, 12, 40, device, np.random.default_rng(0))
    difference = max_difference(inputs, size, device)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)
    out = channels_last((batch, 3, size, size), torch.bfloat16, device)
    crop_resize_normalize(device_table(*inputs, device), batch, size, mean, std, out)
    reference = crops_reference(*inputs, size, mean, std, torch.float32)
    _, exponent = torch.frexp(reference)
    one_ulp = torch.ldexp(torch.ones_like(reference), exponent - 8)  # bf16: 8 significant bits
    bound = one_ulp + TOLERANCE / min(IMAGENET_STD)
    bf16_ok = bool(((out.float() - reference).abs() <= bound).all())
    print(table([[batch, size, f"{difference:.2e}", TOLERANCE, "yes" if bf16_ok else "NO"]],
                ["batch", "size", "max |diff| fp32 (0-255)", "bound", "bf16 within 1 ulp"]))
    if difference > TOLERANCE or not bf16_ok:
        sys.exit("dry run: the kernel differs from the reference")
    print("dry run: kernel == reference on the CPU (Triton interpreter); nothing timed or saved")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=176)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, Triton interpreter, tiny sizes: check equality, no timing")
    args = parser.parse_args()
    if args.dry_run:
        dry_run(batch=4, size=16)
        return
    if not torch.cuda.is_available():
        sys.exit("error: bench_crop_kernel.py times CUDA kernels and this machine has no GPU; "
                 "run it on a GPU machine (or with --dry-run to check it on the CPU)")
    result = measure(torch.device("cuda"), args.batch, args.size, args.repeats)
    path = save_result("bench_crop_kernel_cuda", result)
    rows = [[name, f"{result[name]['median_ms']:.3f}",
             "{:.3f}-{:.3f}".format(*result[name]["quartiles_ms"])]
            for name in ("kernel", "reference")]
    print(table(rows, ["method", "median ms / batch", "quartiles"]))
    host = result["host_ms_per_call"]
    print(f"batch {args.batch}, {args.size} px bf16 channels_last: reference / kernel "
          f"{result['reference_over_kernel']:.1f}x; host ms per call: kernel {host['kernel']:.2f}, "
          f"reference {host['reference']:.2f}, fill_table {result['fill_table_host_ms']:.2f}; "
          f"max |kernel - reference| {result['max_abs_difference_0_255']:.2e} (0-255 scale)")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
