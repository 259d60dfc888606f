"""Training-pipeline throughput on the CPU: our FFCV loader vs torchvision, and our seeded crop
decoder vs FFCV's own RandomResizedCrop + RandomHorizontalFlip.

Same generated JPEG tree (the .beton stores half the images as JPEG, like ffcv-imagenet), same
batch size and number of workers throughout.
1. `ImageLoader` (seeded RandomResizedCrop + flip, normalise; channels_last float output) vs
   torchvision `ImageFolder` + `DataLoader` with the same transforms. Target: ours >= 3x.
2. Two bare FFCV Loaders that differ only in the crop: `SeededRandomResizedCrop` (crop and flip
   keyed by (seed, epoch, sample), flip folded into the decoder) vs FFCV's
   `RandomResizedCropRGBImageDecoder` + `RandomHorizontalFlip`; both then normalise and hand over
   channels_last tensors. Target: seeded >= 0.95x FFCV's own (at most 5 % slower).
Each loader gets one untimed warm-up epoch (for FFCV that is the JIT compile, reported
separately); then every round times one epoch of each, interleaved, and the ratios are medians of
the per-round ratios, so that a slow spell of a shared machine hits both sides of a ratio alike.
For the FFCV pair the process CPU time per image is reported too (their threads are in-process).
"""
import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, ToTensor, ToTorchImage
from torchvision import transforms as T

from ffcv_cram.data.convert import convert
from ffcv_cram.data.loader_options import LoaderOptions
from ffcv_cram.data.pipelines import IMAGENET_MEAN, IMAGENET_STD, ImageLoader
from ffcv_cram.data.seeded_decoder import SeededRandomResizedCrop
from ffcv_cram.data.synthetic import generate

from common import save_result, table

IMAGELOADER, TORCHVISION = "ImageLoader (seeded crops)", "torchvision DataLoader"
SEEDED, FFCV_OWN = "FFCV Loader, seeded crop+flip decoder", "FFCV Loader, FFCV's crop + flip ops"


class EpochLoader:
    """A bare FFCV Loader that starts epoch `set_epoch(e)` next (its seeded decoder too)."""

    def __init__(self, beton, args, seeded: bool):
        self.decoder = SeededRandomResizedCrop((args.resolution,) * 2, seed=0) if seeded else None
        crop = ([self.decoder] if seeded else
                [RandomResizedCropRGBImageDecoder((args.resolution,) * 2), RandomHorizontalFlip()])
        self.loader = ffcv_loader(beton, args, crop)

    def set_epoch(self, epoch: int) -> None:
        self.loader.next_epoch = epoch
        if self.decoder is not None:
            self.decoder.set_epoch(epoch)

    def __iter__(self):
        return iter(self.loader)


def ffcv_loader(beton, args, crop: list) -> Loader:
    image = [*crop, NormalizeImage(np.array(IMAGENET_MEAN), np.array(IMAGENET_STD), np.float32),
             ToTensor(), ToTorchImage(channels_last=True)]
    return Loader(beton, batch_size=args.batch_size, num_workers=args.workers, seed=0,
                  order=OrderOption.RANDOM, drop_last=True,
                  pipelines={"image": image, "label": [IntDecoder(), ToTensor()]})


def epoch(batches) -> int:
    count = 0
    for x, _ in batches:
        count += x.shape[0]
    return count


def timed_epoch(name, loader, round_index) -> tuple[float, float]:
    """(images/s, CPU seconds per image) of one epoch."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(round_index)
    batches = loader
    if name == TORCHVISION:
        batches = ((x.contiguous(memory_format=torch.channels_last), y) for x, y in loader)
    wall, cpu = time.perf_counter(), time.process_time()
    n = epoch(batches)
    return n / (time.perf_counter() - wall), (time.process_time() - cpu) / n


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--size", type=int, default=256, help="side of the generated JPEGs")
    parser.add_argument("--resolution", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--epochs", type=int, default=3, help="timed rounds")
    parser.add_argument("--no-torchvision", action="store_true",
                        help="only the seeded vs FFCV crop comparison")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    generate(work / "tree", classes=10, train_per_class=args.images // 10, val_per_class=0,
             size=args.size)
    root = str(work / "tree" / "train")
    beton = str(work / "train.beton")
    convert("folder", "train", root, beton, write_mode="proportion", compress_probability=0.5,
            jpeg_quality=90, progress=False)

    loaders, jit_s = {}, {}
    start = time.perf_counter()
    loaders[IMAGELOADER] = ImageLoader(beton, train=True, batch_size=args.batch_size,
                                       resolution=args.resolution,
                                       options=LoaderOptions(num_workers=args.workers))
    epoch(loaders[IMAGELOADER])
    jit_s[IMAGELOADER] = time.perf_counter() - start
    for name, seeded in ((SEEDED, True), (FFCV_OWN, False)):
        start = time.perf_counter()
        loaders[name] = EpochLoader(beton, args, seeded)
        epoch(loaders[name])
        jit_s[name] = time.perf_counter() - start
    if not args.no_torchvision:
        normalize = T.Normalize([m / 255 for m in IMAGENET_MEAN], [s / 255 for s in IMAGENET_STD])
        folder = torchvision.datasets.ImageFolder(root, T.Compose([
            T.RandomResizedCrop(args.resolution), T.RandomHorizontalFlip(), T.ToTensor(),
            normalize]))
        loaders[TORCHVISION] = torch.utils.data.DataLoader(
            folder, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
            drop_last=True, persistent_workers=True)
        epoch(loaders[TORCHVISION])  # warm-up: worker start

    rates = {name: [] for name in loaders}
    cpu_per_image = {name: [] for name in (SEEDED, FFCV_OWN)}
    for round_index in range(1, args.epochs + 1):
        # alternate which of the pair goes first, so neither always follows the other
        pair = (SEEDED, FFCV_OWN) if round_index % 2 else (FFCV_OWN, SEEDED)
        for name in (*pair, *(n for n in loaders if n not in pair)):
            rate, cpu = timed_epoch(name, loaders[name], round_index)
            rates[name].append(rate)
            if name in cpu_per_image:
                cpu_per_image[name].append(cpu)
    median = {k: statistics.median(v) for k, v in rates.items()}
    seeded_ratio = statistics.median(s / f for s, f in zip(rates[SEEDED], rates[FFCV_OWN]))
    cpu_ratio = statistics.median(f / s for s, f in zip(cpu_per_image[SEEDED],
                                                         cpu_per_image[FFCV_OWN]))
    result = {
        "images": args.images, "size": args.size, "resolution": args.resolution,
        "batch_size": args.batch_size, "workers": args.workers, "rounds": args.epochs,
        "jit_first_epoch_s": jit_s, "images_per_s": rates, "median_images_per_s": median,
        "cpu_s_per_image": cpu_per_image,
        "seeded_vs_ffcv": {"ratio_images_per_s": seeded_ratio, "ratio_cpu_time": cpu_ratio,
                           "target_ratio": 0.95}}
    rows = [[k, f"{v:,.0f}"] for k, v in median.items()]
    rows.append(["seeded / FFCV's own, images/s (median of rounds)", f"{seeded_ratio:.3f}x"])
    rows.append(["seeded / FFCV's own, by CPU time per image", f"{cpu_ratio:.3f}x"])
    if TORCHVISION in loaders:
        ratio = statistics.median(a / b for a, b in zip(rates[IMAGELOADER], rates[TORCHVISION]))
        result.update(ratio=ratio, target_ratio=3.0)
        rows.append(["ImageLoader / torchvision", f"{ratio:.2f}x"])
    path = save_result("bench_loader_cpu", result)
    print(table(rows, ["loader", "images/s (median epoch)"]))
    print("first epoch (JIT compile included, not timed above): "
          + ", ".join(f"{k} {v:.1f} s" for k, v in jit_s.items()))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
