"""Conversion speed: our writer (write_datasets.py's engine) vs a bare ffcv DatasetWriter.

Same generated tree, same settings (max_resolution, JPEG quality, workers); the bare writer reads
each file with PIL and converts to RGB, the minimum any conversion does. Runs alternate, median of
the repeats. Target: ours / bare >= 0.95 (robustness must cost nothing).
"""
import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from ffcv.fields import IntField, RGBImageField
from ffcv.writer import DatasetWriter
from PIL import Image

from ffcv_cram.data.convert import convert
from ffcv_cram.data.sources import FolderSource
from ffcv_cram.data.synthetic import generate

from common import save_result, table


class PlainFolder:
    """What a bare conversion does per file: PIL decode, RGB, label."""

    def __init__(self, root):
        source = FolderSource(root)
        self.paths, self.labels = source.paths, source.labels

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as image:
            return np.asarray(image.convert("RGB")), int(self.labels[i])


def bare(root, out, mode, max_res, workers):
    writer = DatasetWriter(out, {"image": RGBImageField(write_mode=mode, max_resolution=max_res,
                                                        jpeg_quality=90),
                                 "label": IntField()}, num_workers=workers)
    writer.from_indexed_dataset(PlainFolder(root), chunksize=100)


def ours(root, out, mode, max_res, workers):
    convert("folder", "train", root, out, write_mode=mode, max_resolution=max_res, jpeg_quality=90,
            num_workers=workers, overwrite=True, progress=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--max-resolution", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_write_"))
    root = work / "tree"
    generate(root, classes=10, train_per_class=args.images // 10, val_per_class=0, size=args.size)
    root = str(root / "train")
    cases, rows = [], []
    for mode in ("raw", "jpg"):
        times = {"ours": [], "bare ffcv": []}
        for _ in range(args.repeats):
            for name, fn in (("ours", ours), ("bare ffcv", bare)):
                out = str(work / f"{name.replace(' ', '_')}.beton")
                if os.path.exists(out):
                    os.remove(out)
                start = time.perf_counter()
                fn(root, out, mode, args.max_resolution, args.workers)
                times[name].append(time.perf_counter() - start)
        rate = {k: args.images / statistics.median(v) for k, v in times.items()}
        cases.append({"write_mode": mode, "times_s": times, "images_per_s": rate,
                      "ratio": rate["ours"] / rate["bare ffcv"]})
        rows.append([mode, f"{rate['ours']:,.0f}", f"{rate['bare ffcv']:,.0f}",
                     f"{rate['ours'] / rate['bare ffcv']:.3f}"])
    path = save_result("bench_write_cpu", {"images": args.images, "size": args.size,
                                           "max_resolution": args.max_resolution,
                                           "workers": args.workers, "target_ratio": 0.95,
                                           "cases": cases})
    print(table(rows, ["write mode", "ours img/s", "bare ffcv img/s", "ratio"]))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
