"""Convert an image dataset split to an FFCV .beton file (once, before training).

    python write_datasets.py --cfg.dataset=imagenet --cfg.split=train \
        --cfg.data_dir=/data/imagenet/train --cfg.write_path=/data/ffcv/train_500_0.50_90.beton \
        --cfg.max_resolution=500 --cfg.write_mode=proportion --cfg.compress_probability=0.5 \
        --cfg.jpeg_quality=90
"""
import sys

from fastargs import Param, Section
from fastargs.validation import OneOf

from ffcv_cram.config import Flag, IntRange, fail, parse
from ffcv_cram.data.convert import DATASETS, ConversionError, convert
from ffcv_cram.data.encoding import WRITE_MODES
from ffcv_cram.interrupts import treat_sigterm_as_ctrl_c

Section("cfg", "conversion").params(
    dataset=Param(OneOf(DATASETS), "imagenet | folder (any class-per-folder tree) | cifar10",
                  required=True),
    split=Param(OneOf(["train", "val"]), "which split is being written", required=True),
    data_dir=Param(str, "folder of the split (e.g. .../train); for cifar10 the folder holding "
                        "cifar-10-batches-py", required=True),
    write_path=Param(str, "output .beton file", required=True),
    max_resolution=Param(IntRange(0), "longest side kept (larger images are "
                         "shrunk, smaller ones untouched); 0 keeps every size", default=0),
    write_mode=Param(OneOf(WRITE_MODES), "raw | jpg | proportion | smart", default="raw"),
    compress_probability=Param(float, "proportion mode: fraction of images stored as JPEG"),
    jpeg_quality=Param(IntRange(1, 100), "JPEG quality", default=90),
    smart_threshold=Param(int, "smart mode: raw bytes above which an image is stored as JPEG"),
    num_workers=Param(IntRange(0), "writer processes (0: one per core)", default=0),
    chunk_size=Param(IntRange(1), "images per work item", default=100),
    subset=Param(int, "write a seeded random subset of this many images (-1: all)", default=-1),
    calibration=Param(IntRange(0), "write a class-balanced calibration set of this many training images "
                           "(0: off)", default=0),
    holdout_per_class=Param(IntRange(0), "split the training images of data_dir in two that never "
                            "overlap: --cfg.split=val writes the last N images of each class (sorted "
                            "file order), --cfg.split=train the rest (0: off)", default=0),
    seed=Param(int, "seed for subsets, calibration sets and proportion mode", default=0),
    on_bad_image=Param(OneOf(["skip", "fail"]), "unreadable images: skip (and list them) or fail",
                       default="skip"),
    overwrite=Param(Flag(), "replace an existing output", default=False),
    download=Param(Flag(), "cifar10: fetch the dataset if missing (needs network)", default=False),
)


def main(argv=None) -> int:
    treat_sigterm_as_ctrl_c()  # no partial output stays behind either way
    cfg = parse(__doc__.splitlines()[0], argv)["cfg"]
    try:
        result, classes = convert(**cfg)
    except ConversionError as err:
        fail(str(err))
    except KeyboardInterrupt:
        fail("interrupted; no output was written", code=130)
    print(f"wrote {result.path}: {result.written:,} images ({len(classes)} classes), "
          f"{len(result.skipped):,} skipped, {result.bytes / 2**20:,.1f} MiB, "
          f"{result.images_per_second:,.0f} images/s ({result.seconds:.1f} s)")
    if result.skipped:
        print(f"skipped files and reasons: {result.path}.skipped.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
