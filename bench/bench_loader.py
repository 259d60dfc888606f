"""Training-pipeline throughput on the CPU: our FFCV loader vs torchvision ImageFolder + DataLoader.

Same generated JPEG tree (the .beton stores half the images as JPEG, like ffcv-imagenet), same
transforms (RandomResizedCrop, flip, normalise; channels_last float output), same batch size and
number of workers. Each side gets one untimed warm-up epoch (for FFCV that is the JIT compile,
reported separately), then timed epochs alternate. Target: ours >= 3x.
"""
import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torchvision import transforms as T

from ffcv_cram.data.convert import convert
from ffcv_cram.data.pipelines import IMAGENET_MEAN, IMAGENET_STD, ImageLoader
from ffcv_cram.data.synthetic import generate

from common import save_result, table


def epoch(loader):
    count = 0
    for x, _ in loader:
        count += x.shape[0]
    return count


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--size", type=int, default=256, help="side of the generated JPEGs")
    parser.add_argument("--resolution", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    generate(work / "tree", classes=10, train_per_class=args.images // 10, val_per_class=0,
             size=args.size)
    root = str(work / "tree" / "train")
    beton = str(work / "train.beton")
    convert("folder", "train", root, beton, write_mode="proportion", compress_probability=0.5,
            jpeg_quality=90, progress=False)

    start = time.perf_counter()
    ours = ImageLoader(beton, train=True, batch_size=args.batch_size, style="imagenet",
                       resolution=args.resolution, num_workers=args.workers)
    epoch(ours)
    jit_s = time.perf_counter() - start

    normalize = T.Normalize([m / 255 for m in IMAGENET_MEAN], [s / 255 for s in IMAGENET_STD])
    folder = torchvision.datasets.ImageFolder(root, T.Compose([
        T.RandomResizedCrop(args.resolution), T.RandomHorizontalFlip(), T.ToTensor(), normalize]))
    torch_loader = torch.utils.data.DataLoader(folder, batch_size=args.batch_size, shuffle=True,
                                               num_workers=args.workers, drop_last=True,
                                               persistent_workers=True)
    channels_last = ((x.contiguous(memory_format=torch.channels_last), y) for x, y in torch_loader)
    epoch(torch_loader)  # warm-up: worker start

    times = {"ours (ffcv)": [], "torchvision DataLoader": []}
    for _ in range(args.epochs):
        for name, loader in (("ours (ffcv)", ours), ("torchvision DataLoader", torch_loader)):
            start = time.perf_counter()
            n = epoch(loader if name.startswith("ours") else
                      ((x.contiguous(memory_format=torch.channels_last), y) for x, y in loader))
            times[name].append(n / (time.perf_counter() - start))
    del channels_last
    rate = {k: statistics.median(v) for k, v in times.items()}
    ratio = rate["ours (ffcv)"] / rate["torchvision DataLoader"]
    path = save_result("bench_loader_cpu", {
        "images": args.images, "size": args.size, "resolution": args.resolution,
        "batch_size": args.batch_size, "workers": args.workers, "jit_first_epoch_s": jit_s,
        "images_per_s": times, "median_images_per_s": rate, "ratio": ratio, "target_ratio": 3.0})
    print(table([[k, f"{v:,.0f}"] for k, v in rate.items()] + [["ratio", f"{ratio:.2f}x"]],
                ["loader", "images/s (median epoch)"]))
    print(f"first FFCV epoch (JIT compile included, not timed above): {jit_s:.1f} s")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
