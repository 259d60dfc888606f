"""JPEG decode + augmentation on the GPU (nvJPEG) vs FFCV's CPU decode, alone and feeding ResNet-50.

Data: generated photographs (bench/natural_images.py, about 500 x 375, JPEG quality 90) written
with our writer. Both loaders deliver the same batches: 256 RandomResizedCrop(176) + flip,
normalised, channels_last on the GPU.
1. Correctness first: the GPU path decoded with nvJPEG vs the same path decoded on the CPU, same
   crops and flips (same seed); the run stops if they differ by more than decoder tolerance.
2. Loader alone: images/s of FFCV's CPU decode on all cores (decode=cpu) vs decode=gpu.
3. End to end: ResNet-50 SGD steps (bf16 autocast, channels_last, 176 px) fed by each loader,
   against the same steps on one GPU-resident batch (the model-only ceiling).
Each measurement: a warm-up pass, then the median of --repeats passes, timed with CUDA events.
Targets: GPU decode >= 2x CPU decode and >= 10,000 img/s; training with GPU decode >= 95 % of the
ceiling. Needs CUDA; --dry-run checks the CPU parts (dataset, loaders, argument handling) without.
"""
import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from common import RESULTS, environment, save_result, table
from natural_images import NaturalImages

from ffcv_cram.atomic import write_text
from ffcv_cram.data.encoding import Encoding
from ffcv_cram.data.pipelines import IMAGENET_STD, ImageLoader
from ffcv_cram.data.writer import write_beton
from ffcv_cram.models import get_model
from ffcv_cram.train.step import TrainStep, make_optimizer

LOG: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    LOG.append(line)


def write_dataset(folder: Path, images: int, write_mode: str, workers: int) -> str:
    path = folder / f"natural_{images}_{write_mode}.beton"
    if not path.exists():
        extra = {"compress_probability": 0.5} if write_mode == "proportion" else {}
        write_beton(str(path), NaturalImages(images), range(images),
                    Encoding(write_mode=write_mode, jpeg_quality=90, max_resolution=500, **extra),
                    num_workers=workers)
    return str(path)


def loader(path, decode, device, args, batch_size=None, indices=None):
    return ImageLoader(path, train=True, batch_size=batch_size or args.batch_size,
                       resolution=args.resolution, num_workers=args.workers, decode=decode,
                       device=device, seed=0, indices=indices)


def drain(batches) -> None:
    for _ in batches:
        pass


def check_gpu_matches_cpu(path, args) -> dict:
    """The GPU path with nvJPEG vs with the CPU decoder: same order, crops and flips."""
    runs = []
    for device in ("cuda", "cpu"):
        batches = loader(path, "gpu", device, args, batch_size=64, indices=np.arange(2 * 64))
        runs.append([(x.float().cpu(), y.cpu()) for x, y in batches])
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    diffs = torch.cat([((a - b) * std).abs().flatten() for (a, _), (b, _) in zip(*runs)])
    same_labels = all(torch.equal(ya, yb) for (_, ya), (_, yb) in zip(*runs))
    result = {"mean_abs_diff": diffs.mean().item(), "p99_abs_diff": diffs.quantile(0.99).item(),
              "same_labels": same_labels}
    result["ok"] = same_labels and result["mean_abs_diff"] < 2.0 and result["p99_abs_diff"] < 12.0
    return result


def cuda_timed(fn) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000


def median_rate(fn, images: int, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up: JIT compile, nvJPEG and cuDNN set-up
    rates = [images / cuda_timed(fn) for _ in range(repeats)]
    return statistics.median(rates), rates


def loader_only(path, args) -> dict:
    out = {}
    for decode in ("cpu", "gpu"):
        batches = loader(path, decode, "cuda", args)
        images = len(batches) * args.batch_size
        out[decode] = median_rate(lambda: drain(batches), images, args.repeats)
    return out


def training(path, args) -> dict:
    torch.backends.cudnn.benchmark = True
    model = get_model("resnet50", 1000).cuda().to(memory_format=torch.channels_last)
    optimizer = make_optimizer("sgd", model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-5)
    step = TrainStep(model, optimizer, "sgd", "bf16", device="cuda")
    out, steps = {}, {}
    for decode in ("cpu", "gpu"):
        batches = loader(path, decode, "cuda", args)
        steps[decode] = (lambda b=batches: drain(step(x, y) for x, y in b), len(batches))
    x = torch.randn(args.batch_size, 3, args.resolution, args.resolution, device="cuda")
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch_size,), device="cuda")
    count = steps["gpu"][1]
    steps["ceiling"] = (lambda: drain(step(x, y) for _ in range(count)), count)
    for name in ("ceiling", "gpu", "cpu"):
        fn, n = steps[name]
        out[name] = median_rate(fn, n * args.batch_size, args.repeats)
    return out


def dry_run(path, args) -> None:
    """The CPU side only: the dataset was written; one batch through each decode path."""
    for decode in ("cpu", "gpu"):
        x, _ = next(iter(loader(path, decode, "cpu", args)))
        assert x.shape == (args.batch_size, 3, args.resolution, args.resolution), x.shape
        say(f"dry run: decode={decode} on the CPU gives {tuple(x.shape)} {x.dtype} batches")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10240, help="generated images in the .beton")
    parser.add_argument("--write-mode", choices=["jpg", "proportion"], default="jpg",
                        help="jpg: every image a JPEG; proportion: half raw, as ffcv-imagenet")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=176)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per measurement")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--data-dir", default="", help="keep the .beton here (default: temporary)")
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU needed: a small dataset and one batch per decode path on the CPU")
    args = parser.parse_args()
    if args.dry_run:
        args.images, args.batch_size = min(args.images, 64), min(args.batch_size, 16)
    elif not torch.cuda.is_available():
        print("error: bench_decode.py measures GPU decoding and no CUDA GPU is visible; "
              "run it on a GPU machine (or with --dry-run to check the CPU parts)", file=sys.stderr)
        return 2
    if args.data_dir:
        Path(args.data_dir).mkdir(parents=True, exist_ok=True)
        return run(Path(args.data_dir), args)
    with tempfile.TemporaryDirectory(prefix="bench_decode_") as folder:
        return run(Path(folder), args)


def run(folder: Path, args) -> int:
    path = write_dataset(folder, args.images, args.write_mode, args.workers)
    say(f"dataset: {path} ({os.path.getsize(path) / 2**20:.0f} MiB, {args.images} images, "
        f"write mode {args.write_mode})")
    if args.dry_run:
        dry_run(path, args)
        return 0

    check = check_gpu_matches_cpu(path, args)
    say(f"nvJPEG vs CPU decode, same crops: mean |diff| {check['mean_abs_diff']:.2f}, "
        f"99th percentile {check['p99_abs_diff']:.1f} (0-255 scale)")
    if not check["ok"]:
        print("error: the GPU-decoded batches differ from the CPU-decoded ones beyond decoder "
              "tolerance; not timing a wrong result", file=sys.stderr)
        return 1
    alone = loader_only(path, args)
    trained = training(path, args)
    rate = {name: value[0] for name, value in alone.items()}
    train_rate = {name: value[0] for name, value in trained.items()}
    speedup = rate["gpu"] / rate["cpu"]
    of_ceiling = train_rate["gpu"] / train_rate["ceiling"]
    targets = {"gpu_over_cpu": 2.0, "gpu_images_per_s": 10_000, "train_gpu_of_ceiling": 0.95}
    passed = {"gpu_over_cpu": speedup >= 2.0, "gpu_images_per_s": rate["gpu"] >= 10_000,
              "train_gpu_of_ceiling": of_ceiling >= 0.95}
    import ffcv
    import torchvision
    versions = {"torchvision": torchvision.__version__, "ffcv": ffcv.__version__,
                "numpy": np.__version__}
    path_json = save_result("bench_decode_cuda", {
        "settings": vars(args), "versions": versions, "correctness": check,
        "loader_images_per_s": {k: {"median": v[0], "runs": v[1]} for k, v in alone.items()},
        "train_images_per_s": {k: {"median": v[0], "runs": v[1]} for k, v in trained.items()},
        "gpu_over_cpu": speedup, "train_gpu_of_ceiling": of_ceiling,
        "targets": targets, "passed": passed})
    env = environment()
    say(f"{env.get('gpu')}, driver {env.get('driver')}, torch {env['torch']}, torchvision "
        f"{versions['torchvision']}, triton {env['triton']}, {env['cpu_count']} CPU cores")
    mark = {True: "yes", False: "NO"}
    say(table([
        ["loader: FFCV CPU decode", f"{rate['cpu']:,.0f}", ""],
        ["loader: GPU decode", f"{rate['gpu']:,.0f}",
         f">= 10,000: {mark[passed['gpu_images_per_s']]}"],
        ["loader: GPU / CPU", f"{speedup:.2f}x", f">= 2x: {mark[passed['gpu_over_cpu']]}"],
        ["ResNet-50: GPU-resident data", f"{train_rate['ceiling']:,.0f}", "ceiling"],
        ["ResNet-50: GPU decode", f"{train_rate['gpu']:,.0f}",
         f"{100 * of_ceiling:.1f}% of ceiling (>= 95%: {mark[passed['train_gpu_of_ceiling']]})"],
        ["ResNet-50: CPU decode", f"{train_rate['cpu']:,.0f}",
         f"{100 * train_rate['cpu'] / train_rate['ceiling']:.1f}% of ceiling"],
    ], ["measurement", "images/s (median)", "target"]))
    say(f"saved {path_json}")
    write_text(str(RESULTS / "bench_decode_cuda.log"), "\n".join(LOG) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
