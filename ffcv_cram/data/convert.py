"""One conversion: a dataset split (or a subset, or a calibration set) to a .beton file.

Besides the .beton it writes `<write_path>.classes.json` (the class names; index = label) and,
when images were skipped, `<write_path>.skipped.txt` (one `file<TAB>reason` line each).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..atomic import AtomicWriteError, write_text

from .encoding import Encoding
import numpy as np

from .sources import (Cifar10Source, FolderSource, SourceError, balanced_subset, holdout_split,
                      random_subset)

DATASETS = ("imagenet", "folder", "cifar10")
IMAGENET_CLASSES = 1000


class ConversionError(Exception):
    """A user-facing problem with the conversion's inputs (one line)."""


def open_source(dataset: str, split: str, data_dir: str, download: bool = False):
    if dataset not in DATASETS:
        raise ConversionError(f"dataset={dataset!r}: must be one of {', '.join(DATASETS)}")
    if split not in ("train", "val"):
        raise ConversionError(f"split={split!r}: must be 'train' or 'val'")
    if dataset == "cifar10":
        return Cifar10Source(data_dir, split, download)
    source = FolderSource(data_dir)
    if dataset == "imagenet" and len(source.classes) != IMAGENET_CLASSES:
        raise ConversionError(
            f"{data_dir}: {len(source.classes)} class folders, ImageNet has {IMAGENET_CLASSES} "
            "(the val split must be sorted into class folders first); for other trees use "
            "--cfg.dataset=folder")
    return source


def _file_identity(path: str):
    """(device, inode) of the file at `path`, or None: tells an earlier output from this run's,
    which replaced it by a rename (the two coexisted, so their inodes differ)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def convert(dataset: str, split: str, data_dir: str, write_path: str, *, max_resolution: int = 0,
            write_mode: str = "raw", compress_probability: float | None = None,
            jpeg_quality: int = 90, smart_threshold: int | None = None, num_workers: int = 0,
            chunk_size: int = 100, subset: int = -1, calibration: int = 0, seed: int = 0,
            on_bad_image: str = "skip", overwrite: bool = False, download: bool = False,
            holdout_per_class: int = 0, progress: bool = True):
    """Convert and return (WriteResult, class names). Raises ConversionError for user mistakes.

    Every argument is checked before ffcv (slow to import) is loaded or any file is written.
    `holdout_per_class=N` splits the training images of `data_dir` in two that never overlap:
    split 'val' writes the last N images of each class (`sources.holdout_split`), split 'train'
    the rest; a subset or calibration set is then drawn from that side."""
    encoding = Encoding(write_mode, max_resolution or None, jpeg_quality, compress_probability,
                        smart_threshold, seed)
    try:
        encoding.check()
    except ValueError as err:
        raise ConversionError(str(err)) from None
    if on_bad_image not in ("skip", "fail"):
        raise ConversionError(f"on_bad_image={on_bad_image!r}: must be 'skip' or 'fail'")
    if chunk_size < 1:
        raise ConversionError(f"chunk_size={chunk_size}: must be >= 1")
    if calibration and subset > 0:
        raise ConversionError("use either --cfg.calibration or --cfg.subset, not both")
    if calibration and split != "train":
        raise ConversionError("--cfg.calibration selects training images: use --cfg.split=train")
    if calibration < 0:
        raise ConversionError(f"calibration={calibration}: must be >= 1 (or 0 for off)")
    if holdout_per_class < 0:
        raise ConversionError(f"holdout_per_class={holdout_per_class}: must be >= 1 (or 0 for off)")
    if os.path.exists(write_path) and not overwrite:
        raise ConversionError(f"{write_path}: already exists; pass --cfg.overwrite=1 to replace it")
    try:
        # a hold-out is cut from the training images, whichever side is written
        source = open_source(dataset, "train" if holdout_per_class else split, data_dir, download)
        base = np.arange(len(source))
        if holdout_per_class:
            kept, held = holdout_split(source.labels, holdout_per_class,
                                       lambda c: f"class '{source.classes[c]}'")
            base = held if split == "val" else kept
        if calibration:
            indices = base[balanced_subset(source.labels[base], calibration, seed)]
        elif subset > 0:
            indices = base[random_subset(len(base), subset, seed)]
        else:
            indices = base
    except SourceError as err:
        raise ConversionError(str(err)) from None
    from .writer import BetonWriteError, write_beton  # ffcv: slow to import, so once all is checked
    Path(write_path).parent.mkdir(parents=True, exist_ok=True)
    classes_file, skipped_file = f"{write_path}.classes.json", f"{write_path}.skipped.txt"
    earlier = _file_identity(write_path)
    try:
        result = write_beton(write_path, source, indices, encoding, num_workers, chunk_size,
                             on_bad_image, progress)
        write_text(classes_file, json.dumps(source.classes, indent=1) + "\n")
        if result.skipped:
            write_text(skipped_file,
                       "".join(f"{name}\t{reason}\n" for name, reason in result.skipped))
        elif os.path.exists(skipped_file):
            os.remove(skipped_file)  # stale list from an earlier run of the same output
    except BetonWriteError as err:  # the writer removed its partial file; earlier output is intact
        raise ConversionError(str(err)) from None
    except (AtomicWriteError, KeyboardInterrupt) as err:
        # no partial output: a .beton without its class names is unusable, and Ctrl-C (or SIGTERM,
        # which the CLI turns into it) means "no output". Once this run's .beton is in place
        # (whenever the interrupt lands after the rename), it goes with whatever was written beside
        # it; before that, an earlier output stays as it was.
        if _file_identity(write_path) not in (None, earlier):
            for written in (write_path, classes_file, skipped_file):
                if os.path.isfile(written):
                    os.remove(written)
        if isinstance(err, KeyboardInterrupt):
            raise
        raise ConversionError(f"{err} ({os.path.basename(write_path)} removed with it)") from None
    return result, source.classes
