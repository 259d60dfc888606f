"""Device-resident small-image data (CIFAR-sized; anchor: airbench): the whole .beton decoded once.

At construction the file is read once (raw pixels straight from the file, JPEGs decoded by one
sequential FFCV pass) into one uint8 N x H x W x 3 tensor on the training device (GPU memory, or RAM on the CPU), with the labels beside it. An epoch
is then only batched tensor ops on that device: gather the batch's images, normalise them with
FFCV's own lookup table (float64 (v - mean) / std rounded to float32, so on the CPU a batch equals
the FFCV path's bit for bit), cast to the requested (AMP) dtype, and, for training, flip and
translate by up to 4 px with the FFCV path's generator per (seed, epoch, batch). No loader
threads, no per-epoch start-up.

Order and sharding are the FFCV path's (`pipelines.ShardedOrder`): per epoch one permutation
seeded by seed + epoch, the same on every rank, trimmed to a multiple of world_size, rank r taking
every world_size-th sample from r; whole batches only. Evaluation is sequential, untrimmed, every
sample on exactly one rank. `set_epoch(epoch, start_batch)` resumes an epoch part-way with the
batches and augmentations of the whole epoch. Each epoch's order goes to the device in one copy;
nothing in a batch waits for the device.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .augment import batch_generator, flip_translate
from .encoded_bytes import RAW
from .loader_options import LoaderError
from .normalisation import CIFAR_MEAN, CIFAR_STD, normalised_black, style_constants
from .threads import loader_threads, torch_threads

DATA_SHARE = 0.8  # of the available memory the decoded data may take: the rest is for training


def available_bytes(device: torch.device) -> int:
    """Free memory where the data would live: the GPU's free memory, or MemAvailable on the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def fit_problem(path: str, needed: int, device: torch.device, limit: int | None = None) -> str | None:
    """Why `needed` bytes of decoded data do not fit (None: they do), as one line naming the fix.
    `limit`: the bytes the data may take (None: DATA_SHARE of what the device has available)."""
    if limit is None:
        available = available_bytes(device)
        limit = int(DATA_SHARE * available)
        has = (f"{limit / 2**20:,.1f} MiB may be used ({DATA_SHARE:.0%} of the "
               f"{available / 2**20:,.1f} MiB available)")
    else:
        has = f"{limit / 2**20:,.1f} MiB may be used (--data.resident_limit_mb)"
    if needed <= limit:
        return None
    where = "GPU" if device.type == "cuda" else "host (RAM)"
    return (f"{path}: resident data needs {needed / 2**20:,.1f} MiB of {where} memory, {has}; "
            "use the FFCV loader (--data.resident=0) or a device with more memory")


def _stored(path: str):
    """(image metadata, labels) of the file, read without decoding anything."""
    from ffcv.reader import Reader
    reader = Reader(path)
    fields = list(reader.handlers)
    images = reader.metadata[f"f{fields.index('image')}"]
    labels = np.array(reader.metadata[f"f{fields.index('label')}"], dtype=np.int64)  # a copy
    heights, widths = np.unique(images["height"]), np.unique(images["width"])
    if len(heights) > 1 or len(widths) > 1:
        raise LoaderError(f"{path}: images differ in size; resident data needs one size "
                          "(CIFAR-style); use the FFCV loader (--data.resident=0)")
    return images, labels


def _decode_all(path: str, images, num_workers: int) -> np.ndarray:
    """Every image of the file (uint8 N x H x W x 3), in stored order. Raw images are copied
    straight out of the file; a file with JPEGs goes through one sequential FFCV pass."""
    height, width = int(images["height"][0]), int(images["width"][0])
    out = np.empty((len(images), height, width, 3), np.uint8)
    if (images["mode"] == RAW).all():
        stored = np.memmap(path, np.uint8, mode="r")
        size = height * width * 3
        for i, ptr in enumerate(images["data_ptr"].tolist()):
            out[i] = stored[ptr:ptr + size].reshape(height, width, 3)
        return out
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    loader = Loader(path, batch_size=min(len(out), 1000), num_workers=num_workers,
                    order=OrderOption.SEQUENTIAL, drop_last=False, os_cache=True,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    done = 0
    for batch, _ in loader:  # FFCV reuses its buffers: copy each batch out
        out[done:done + len(batch)] = batch
        done += len(batch)
    torch.set_num_threads(torch_threads())  # FFCV set it to its worker count
    return out


def normalisation_table(mean=CIFAR_MEAN, std=CIFAR_STD) -> torch.Tensor:
    """FFCV's NormalizeImage table, flattened: entry 3 * v + c is (v - mean[c]) / std[c]."""
    table = (np.arange(256)[:, None] - np.array(mean)[None, :]) / np.array(std)[None, :]
    return torch.from_numpy(table.astype(np.float32).reshape(-1))


class ResidentLoader:
    """(images, labels) batches of a .beton held in device memory (module docstring).

    Images come out N x 3 x H x W channels_last (or contiguous) in `dtype`, labels int64 (N,).
    `memory_limit` (bytes): the memory the data may take; None: DATA_SHARE of what the device has
    available. `num_workers`: FFCV threads of the one decoding pass."""

    def __init__(self, path: str, *, train: bool, batch_size: int, device="cpu",
                 dtype: torch.dtype = torch.float32, rank: int = 0, world_size: int = 1,
                 seed: int = 0, channels_last: bool = True, num_workers: int = 0,
                 memory_limit: int | None = None, cifar_inputs: str = "reference"):
        if not os.path.isfile(path):
            raise LoaderError(f"{path}: no such .beton file (write it with write_datasets.py)")
        if batch_size < 1:
            raise LoaderError("batch_size must be >= 1")
        if not 0 <= rank < world_size:
            raise LoaderError(f"rank={rank} is outside world_size={world_size}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        stored, labels = _stored(path)
        needed = len(stored) * (int(stored["height"][0]) * int(stored["width"][0]) * 3 + 8)
        problem = fit_problem(path, needed, self.device, memory_limit)  # images and labels
        if problem:
            raise LoaderError(problem)
        images = _decode_all(path, stored, loader_threads(num_workers))
        self.images = torch.from_numpy(images).to(self.device)
        self.labels = torch.from_numpy(labels).to(self.device)
        mean, std, pad_black = style_constants("cifar", cifar_inputs)  # as the FFCV path's
        self.table = normalisation_table(mean, std).to(self.device)
        self.pad = normalised_black(mean, std, self.device) if pad_black else None
        self.channel = torch.arange(3, device=self.device)
        self.train, self.batch_size, self.dtype = train, batch_size, dtype
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.channels_last = channels_last
        self.epoch, self.start_batch = 0, 0
        n = len(labels)  # this rank's samples per epoch: whole shards for training
        self.samples = (n - n % world_size) // world_size if train else len(range(rank, n, world_size))

    decode_fallbacks = decode_failures = 0  # nothing is decoded after the start

    def order(self, epoch: int) -> np.ndarray:
        """This rank's sample indices of `epoch`, in the FFCV path's order."""
        indices = np.arange(len(self.labels))
        if not self.train:
            return indices[self.rank::self.world_size]
        order = np.random.default_rng(self.seed + epoch).permutation(indices)
        usable = len(order) - len(order) % self.world_size
        return order[:usable][self.rank::self.world_size]

    def __len__(self) -> int:
        n = self.samples
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """The next iteration is epoch `epoch` from its batch `start_batch` on (to resume)."""
        self.epoch = epoch
        if not 0 <= start_batch < max(len(self), 1):
            raise LoaderError(f"start_batch={start_batch}: an epoch has {len(self)} batches")
        self.start_batch = start_batch

    def batch(self, indices: torch.Tensor, epoch: int, number: int):
        """Batch `number` of `epoch`: the images at `indices` (on the device), augmented."""
        pixels = self.images[indices]  # N x H x W x 3 uint8
        x = self.table[pixels.long() * 3 + self.channel].permute(0, 3, 1, 2)  # channels_last view
        x = x.to(self.dtype)
        if self.train:
            x = flip_translate(x, batch_generator(self.seed, epoch, number), fill=self.pad)
        return (x if self.channels_last else x.contiguous()), self.labels[indices]

    def __iter__(self):
        epoch, start, size = self.epoch, self.start_batch, self.batch_size
        self.start_batch = 0  # the epoch after a resumed one starts at its beginning
        order = self.order(epoch)
        batches = len(self)
        order = torch.from_numpy(order[:batches * size] if self.train else order)
        order = order.to(self.device)  # one copy per epoch
        for number in range(start, batches):
            yield self.batch(order[number * size:(number + 1) * size], epoch, number)
