"""FFCV loaders for training and evaluation: ImageNet-style and CIFAR-style pipelines.

Two decode paths. decode='cpu': decoding and augmentation run in FFCV's compiled pipeline. On
the CPU, normalisation runs there too, as FFCV's NormalizeImage placed before ToTensor (after
ToTorchImage it makes the loader spin forever); on a GPU the uint8 batch is moved to the device
and normalised in torch (no CuPy needed). decode='gpu': FFCV only reads each sample's stored
bytes; they are decoded (`jpeg_decoders`: nvImageCodec, TorchCodec or torchvision on a CUDA
device, FFCV's libjpeg-turbo on the CPU) and augmented on the loader's device, `gpu_prefetch`
batches ahead of the caller (`device_batches`, `prefetch`). 'auto' is 'gpu' on a CUDA device.
Batches come out as (images: N x 3 x H x W channels_last in the requested dtype, labels: int64 of
shape (N,), also for a batch of one).
Labels belong to the caller; with decode='cpu' on the CPU, float32/float16 images are views of
the loader's buffers, valid until a few batches later (clone them to keep them longer).

Sharding across ranks uses a seeded order of our own: every rank draws the same per-epoch
permutation (seed + epoch) and takes every world_size-th sample, after trimming the permutation
to a multiple of world_size so all ranks run the same number of steps. Evaluation order is
sequential and not trimmed: each sample is seen by exactly one rank. `set_epoch(epoch, start_batch)`
resumes an epoch part-way: FFCV is handed only the rest of the epoch's order (`start_batch`).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, SimpleRGBImageDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.traversal_order.base import TraversalOrder
from ffcv.transforms import NormalizeImage, ToDevice, ToTensor, ToTorchImage

from . import ffcv_fixes  # noqa: F401  (before any Loader is built)
from .augment import batch_generator, flip_translate
from .device_batches import DeviceBatches
from .encoded_bytes import JPG, EncodedImageBytes, largest_image_bytes
from .jpeg_decoders import DecoderUnavailable, choose_decoder
from .loader_options import LoaderError, LoaderOptions
from .normalisation import (CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD,  # noqa: F401
                            normalised_black, style_constants)  # (re-exported)
from .prefetch import prefetch
from .seeded_decoder import SeededRandomResizedCrop
from .start_batch import StartAtBatch
from .threads import loader_threads, torch_threads

ORDERS = ("random", "quasi_random", "sequential")


class ShardedOrder(TraversalOrder):
    """Seeded permutation per epoch (or the stored order), split across ranks."""

    def __init__(self, loader, rank: int, world_size: int, shuffle: bool):
        super().__init__(loader)
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle

    def sample_order(self, epoch: int):
        if not self.shuffle:
            return self.indices[self.rank::self.world_size]
        order = np.random.default_rng(self.seed + epoch).permutation(self.indices)
        usable = len(order) - len(order) % self.world_size
        return order[:usable][self.rank::self.world_size]


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ImageLoader:
    """An FFCV loader of (images, labels) batches of the .beton file `path`, loaded as `options`
    (`loader_options.LoaderOptions`, shared by a run's loaders) say.

    `indices` restricts the loader to those samples (e.g. a seeded calibration subset).
    style 'imagenet': train = RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3) + flip, drawn per
    (seed, epoch, dataset index) so runs replay exactly whatever the thread count
    (`seeded_crops`), val = center crop of `crop_ratio` resized to `resolution`; style 'cifar':
    train = flip + random translate by up to 4 px, padded with black as the CrAM reference's
    RandomCrop(32, padding=4), seeded per (seed, epoch, batch) so runs replay exactly
    (`ffcv_cram.data.augment`), val = the stored image. Both normalised with the style's
    mean/std (`normalisation`: for CIFAR the reference's; `cifar_inputs='cifar10_std'`: the true
    std and padding with the mean, as ffcv-cram before). `decode` 'gpu' decodes and augments on
    `device` with `options.gpu` (`GpuDecodeOptions`): the same crops and flips for the same sample
    as 'cpu', resampled with anti-aliased bilinear (FFCV: OpenCV's INTER_AREA), `gpu.prefetch`
    batches ahead of the caller. Corrupt JPEGs are counted in `decode_fallbacks` (decoded on the
    CPU instead) and `decode_failures` (replaced by a blank image); the cpu path has no such counts.

    `num_workers` <= 0 picks this process's share of the usable cores (`threads.loader_threads`;
    pass the share yourself when several loaders iterate at the same time). FFCV sets torch's
    intra-op thread count to the loader's worker count whenever a loader is built or iterated;
    the loader sets it back to `threads.torch_threads()` (OMP_NUM_THREADS, else the process's
    share of the cores), so that torchrun's processes do not oversubscribe the CPU.
    """

    def __init__(self, path: str, *, train: bool, batch_size: int, resolution: int = 224,
                 seed: int = 0, order: str | None = None, drop_last: bool | None = None,
                 indices=None, options: LoaderOptions = LoaderOptions()):
        if not os.path.isfile(path):
            raise LoaderError(f"{path}: no such .beton file (write it with write_datasets.py)")
        if batch_size < 1 or resolution < 1:
            raise LoaderError("batch_size and resolution must be >= 1")
        order = order or ("random" if train else "sequential")
        if order not in ORDERS:
            raise LoaderError(f"order={order!r}: must be one of {', '.join(ORDERS)}")
        rank, world_size = options.rank, options.world_size
        if options.distributed:
            dist_rank, dist_world = _dist_rank_world()
            rank = dist_rank if rank is None else rank
            world_size = dist_world if world_size is None else world_size
        rank, world_size = rank or 0, world_size or 1
        if not 0 <= rank < world_size:
            raise LoaderError(f"rank={rank} is outside world_size={world_size}")
        if order == "quasi_random" and (world_size > 1 or options.in_memory):
            raise LoaderError("order=quasi_random works only with one process and in_memory=False")
        style, gpu = options.style, options.gpu
        self.device = torch.device(options.device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype, self.train, self.style = options.dtype, train, style
        self.channels_last = options.channels_last
        self.decode = options.decode if options.decode != "auto" else \
            ("gpu" if self.device.type == "cuda" else "cpu")
        mean, std, pad_black = style_constants(style, options.cifar_inputs)
        self.seed = seed
        self.on_gpu = self.device.type == "cuda"
        self.decoder, self.device_batches = None, None
        self.gpu_prefetch, self.sync_handover = gpu.prefetch, gpu.variants.sync_handover
        if self.decode == "gpu":
            image_ops, label_ops = [_bytes_reader(path)], [IntDecoder(), ToTensor()]
        else:
            self.decoder = self._decoder(style, train, resolution, options.crop_ratio, seed)
            image_ops, label_ops = self._cpu_pipelines(style, train, mean, std)
        self.num_workers = loader_threads(options.num_workers)
        self.torch_threads = torch_threads()
        self.loader = Loader(
            path, batch_size=batch_size, num_workers=self.num_workers,
            os_cache=options.in_memory, seed=seed,
            drop_last=train if drop_last is None else drop_last,
            order=OrderOption.QUASI_RANDOM if order == "quasi_random" else OrderOption.SEQUENTIAL,
            pipelines={"image": image_ops, "label": label_ops},
            indices=None if indices is None else np.asarray(indices, dtype=np.uint64))
        self._reset_torch_threads()
        if self.decode == "gpu":
            if style == "cifar":
                _check_one_size(path, self.loader.reader)
            jpegs = _has_jpegs(self.loader.reader)  # a raw-only dataset needs no decoder
            try:
                jpeg = choose_decoder(gpu.jpeg_decoder, self.device, self.num_workers) \
                    if jpegs else None
            except DecoderUnavailable as err:
                raise LoaderError(f"decode='gpu' with jpeg_decoder={gpu.jpeg_decoder!r}: {err}; "
                                  "choose another ('auto' takes one that works) or decode='cpu'"
                                  ) from None
            self.device_batches = DeviceBatches(
                self.device, style, train, resolution, options.crop_ratio, mean, std, self.dtype,
                self.channels_last, seed, decoder=jpeg, slots=gpu.prefetch + 1,
                crop_kernel=gpu.variants.crop_kernel, region_decode=gpu.variants.region_decode,
                pad_black=pad_black)
        if order != "quasi_random":
            self.loader.traversal_order = ShardedOrder(self.loader, rank, world_size,
                                                       shuffle=order == "random")
            self.loader.first_traversal_order = self.loader.next_traversal_order()
        self._start = StartAtBatch(self.loader, self.loader.traversal_order)
        self.loader.traversal_order = self._start
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.pad = normalised_black(mean, std, self.device) if pad_black else None

    def _cpu_pipelines(self, style, train, mean, std):
        image_ops = [self.decoder]  # the imagenet train decoder flips too
        to_device = [ToDevice(self.device, non_blocking=True)] if self.on_gpu else []
        if not self.on_gpu:  # normalise in the compiled pipeline, before ToTensor (see above)
            np_dtype = np.float16 if self.dtype == torch.float16 else np.float32
            image_ops.append(NormalizeImage(np.array(mean), np.array(std), np_dtype))
        image_ops += [ToTensor(), *to_device, ToTorchImage(channels_last=True)]
        # labels leave FFCV as (N, 1): no Squeeze op, which squeezes a batch of one to a 0-d
        # tensor; they are flattened with reshape(-1) in __iter__
        return image_ops, [IntDecoder(), ToTensor(), *to_device]

    @staticmethod
    def _decoder(style, train, resolution, crop_ratio, seed):
        if style == "cifar":
            return SimpleRGBImageDecoder()
        if train:
            return SeededRandomResizedCrop((resolution, resolution), seed)
        return CenterCropRGBImageDecoder((resolution, resolution), ratio=crop_ratio)

    @property
    def num_samples(self) -> int:
        return len(self.loader.first_traversal_order)

    @property
    def jpeg_decoder(self) -> str:
        """What decodes this loader's JPEGs (a sentence), '' where nothing does on the device."""
        if self.device_batches is None or self.device_batches.decoder is None:
            return ""
        return self.device_batches.decoder.description

    @property
    def decode_fallbacks(self) -> int:
        """Samples so far that the device could not decode and the CPU did."""
        return self.device_batches.counts.fallbacks if self.device_batches else 0

    @property
    def decode_failures(self) -> int:
        """Samples so far that no decoder could read (given as blank images)."""
        return self.device_batches.counts.failures if self.device_batches else 0

    def set_resolution(self, resolution: int) -> None:
        """Output size of the next epoch (ImageNet style), without building a new Loader."""
        if self.style != "imagenet":
            raise LoaderError("the cifar style keeps the stored resolution")
        if self.device_batches is not None:
            self.device_batches.resolution = resolution
        else:
            self.decoder.output_size = (resolution, resolution)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next iteration epoch `epoch` (its order depends on seed + epoch), starting at
        its batch `start_batch`: the batches before it are skipped without being read, and the
        rest are those of the whole epoch, augmented as they would be there (to resume an epoch)."""
        if not 0 <= start_batch < max(len(self), 1):
            raise LoaderError(f"start_batch={start_batch}: an epoch has {len(self)} batches")
        self.loader.next_epoch = epoch
        self._start.start_batch = start_batch

    def __len__(self) -> int:
        return len(self.loader)

    def _reset_torch_threads(self) -> None:
        """Undo FFCV's `torch.set_num_threads(num_workers)` (in Loader() and Loader.__iter__)."""
        if torch.get_num_threads() != self.torch_threads:
            torch.set_num_threads(self.torch_threads)

    def _epoch_iterator(self):
        if isinstance(self.decoder, SeededRandomResizedCrop):  # before FFCV's thread starts
            self.decoder.set_epoch(self.loader.next_epoch)
        try:
            epoch_iterator = iter(self.loader)
        finally:
            self._start.start_batch = 0  # the epoch after a resumed one starts at its beginning
        self._reset_torch_threads()
        return epoch_iterator

    def _finish(self, images: torch.Tensor) -> torch.Tensor:
        if self.on_gpu:  # uint8 on the device: normalise here
            images = (images.float() - self.mean) / self.std
        if images.dtype != self.dtype:
            images = images.to(self.dtype)
        return images if self.channels_last else images.contiguous()

    def __iter__(self):
        # batches keep their numbers in the whole epoch: augmentation is seeded by them
        epoch, start = self.loader.next_epoch, self._start.start_batch
        if self.device_batches is not None:
            yield from prefetch(lambda: self._device_batches(epoch, start), self.device,
                                self.gpu_prefetch, self.sync_handover)
            return
        for batch, (images, labels) in enumerate(self._epoch_iterator(), start):
            images = self._finish(images)
            if self.train and self.style == "cifar":
                images = flip_translate(images, batch_generator(self.seed, epoch, batch),
                                        fill=self.pad)
            yield images, labels.reshape(-1).long().clone()

    def epochs(self, count: int | None = None):
        """The batches of `count` epochs (None: without end) from the next one on, as one stream:
        with decode='gpu' a single producer thread runs across epoch boundaries, so the next
        epoch's first batches are prepared while the last ones of this epoch train (FFCV still
        starts a reader per epoch). Resolution changes apply from the epoch after the batches
        already prepared; the training loop iterates epoch by epoch instead."""
        first = self.loader.next_epoch
        if self.device_batches is None:
            for epoch in range(first, first + count) if count is not None else _count_from(first):
                self.set_epoch(epoch)
                yield from self
            return

        def chained():
            epoch = first
            while count is None or epoch < first + count:
                self.loader.next_epoch = epoch
                yield from self._device_batches(epoch, 0)
                epoch += 1
        yield from prefetch(chained, self.device, self.gpu_prefetch, self.sync_handover)

    def _device_batches(self, epoch: int, start: int):
        epoch_iterator = self._epoch_iterator()
        try:
            for batch, (rows, labels) in enumerate(epoch_iterator, start):
                yield self.device_batches(rows, labels, epoch, batch)
        finally:
            epoch_iterator.close()  # stops FFCV's reader thread when the epoch is cut short


def _count_from(first: int):
    while True:
        yield first
        first += 1


def _has_jpegs(reader) -> bool:
    images = reader.metadata[f"f{list(reader.handlers).index('image')}"]
    return bool((images["mode"] == JPG).any())


def _bytes_reader(path: str) -> EncodedImageBytes:
    try:
        return EncodedImageBytes(largest_image_bytes(path))
    except ValueError as err:
        raise LoaderError(str(err)) from None


def _check_one_size(path: str, reader) -> None:
    images = reader.metadata[f"f{list(reader.handlers).index('image')}"]
    if len(np.unique(images["height"])) > 1 or len(np.unique(images["width"])) > 1:
        raise LoaderError(f"{path}: images differ in size but the cifar style keeps the stored "
                          "size; use the imagenet style")
