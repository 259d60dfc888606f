"""Where images come from: class-per-folder trees and CIFAR-10's pickled batches.

A source has `classes` (index -> name), `labels` (one per sample) and `load(i)`, which returns an
(H, W, 3) uint8 array or raises `BadImage`; `describe(i)` names sample i for error messages.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from .images import load_rgb

CIFAR_FOLDER = "cifar-10-batches-py"


class SourceError(Exception):
    """The input tree or file set is unusable as a whole (one-line message for the user)."""


class FolderSource:
    """A class-per-folder tree (ImageFolder layout): classes and files in sorted order.

    Every regular, non-hidden file inside a class folder is a sample; files that turn out not
    to be images are reported by `load` like any other unreadable image.
    """

    def __init__(self, root):
        self.root = Path(root)
        if not self.root.is_dir():
            raise SourceError(f"{root}: no such directory (check --cfg.data_dir)")
        folders = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise SourceError(f"{root}: no class folders found (expected {root}/<class>/<image>)")
        self.classes = [f.name for f in folders]
        self.paths, labels = [], []
        for label, folder in enumerate(folders):
            files = sorted(str(p) for p in _walk_files(folder))
            if not files:
                raise SourceError(f"{folder}: class folder is empty; remove it or add its images")
            self.paths += files
            labels += [label] * len(files)
        self.labels = np.array(labels, dtype=np.int64)

    def __len__(self):
        return len(self.paths)

    def load(self, i: int) -> np.ndarray:
        return load_rgb(self.paths[i])

    def describe(self, i: int) -> str:
        return self.paths[i]


def _walk_files(folder: Path):
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith("."):
                yield Path(dirpath) / name


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        data = pickle.load(f, encoding="bytes")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in data.items()}


class Cifar10Source:
    """CIFAR-10 as torchvision stores it: <data_dir>/cifar-10-batches-py/{data_batch_1..5,
    test_batch, batches.meta}. split 'train' reads the five data batches, 'val' the test batch."""

    def __init__(self, data_dir, split: str, download: bool = False):
        folder = Path(data_dir) / CIFAR_FOLDER
        if not folder.is_dir() and download:
            import torchvision
            torchvision.datasets.CIFAR10(str(data_dir), train=(split == "train"), download=True)
        if not folder.is_dir():
            raise SourceError(f"{folder}: not found; point --cfg.data_dir at the folder holding "
                              f"{CIFAR_FOLDER}, or pass --cfg.download=1 to fetch it")
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        images, labels = [], []
        for name in names:
            path = folder / name
            if not path.is_file():
                raise SourceError(f"{path}: missing CIFAR-10 batch file; re-download the dataset")
            try:
                batch = _unpickle(path)
                images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.append(np.asarray(batch["labels"], dtype=np.int64))
            except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as err:
                raise SourceError(f"{path}: not a CIFAR-10 batch file ({err})") from None
        self.images = np.ascontiguousarray(np.concatenate(images).transpose(0, 2, 3, 1))
        self.labels = np.concatenate(labels)
        meta = folder / "batches.meta"
        if meta.is_file():
            names = _unpickle(meta).get("label_names", [])
            self.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        else:
            self.classes = [str(i) for i in range(int(self.labels.max()) + 1)]

    def __len__(self):
        return len(self.labels)

    def load(self, i: int) -> np.ndarray:
        return self.images[i]

    def describe(self, i: int) -> str:
        return f"{CIFAR_FOLDER} sample {i}"


def random_subset(n_total: int, n: int, seed: int) -> np.ndarray:
    """`n` distinct sample indices chosen uniformly (seeded), in increasing order."""
    if n > n_total:
        raise SourceError(f"subset of {n} requested but the split has only {n_total} images")
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))


def holdout_split(labels: np.ndarray, per_class: int, describe=None) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, hold-out indices): the last `per_class` samples of each class in the
    source's order (sorted file order for folder trees), so the split is the same on every
    machine. The two are complementary by construction: together every sample exactly once."""
    held = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if per_class >= len(members):
            name = describe(int(c)) if describe else f"class {int(c)}"
            raise SourceError(f"hold-out of {per_class} per class leaves no training images in "
                              f"{name} ({len(members)} images); lower --cfg.holdout_per_class")
        held.append(members[len(members) - per_class:])
    holdout = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    keep = np.ones(len(labels), bool)
    keep[holdout] = False
    return np.flatnonzero(keep), holdout


def balanced_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """`n` sample indices spread as evenly as possible over the classes (seeded), sorted.

    Classes are visited round-robin in a seeded random order, each contributing its next image in
    a seeded shuffle, so per-class counts differ by at most one (unless a class runs out).
    n = number of classes gives one image per class.
    """
    if n > len(labels):
        raise SourceError(f"calibration set of {n} requested but the split has only "
                          f"{len(labels)} images")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    pools = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in classes}
    order = list(rng.permutation(classes))
    chosen = []
    while len(chosen) < n:
        for c in order:
            if pools[c] and len(chosen) < n:
                chosen.append(pools[c].pop())
    return np.sort(np.array(chosen, dtype=np.int64))

