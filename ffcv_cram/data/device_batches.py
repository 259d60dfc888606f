"""The decode='gpu' path of ImageLoader: one FFCV batch of stored bytes -> (images, labels) on a device.

Per batch, all on the current (the loader's side) CUDA stream, no host waits:
1. crops and flips: `seeded_crops` per (seed, epoch, dataset index) for imagenet training (the
   CPU decoder's rule), FFCV's centre crop for validation, the whole stored image for cifar;
2. JPEGs: the loader's decoder (`jpeg_decoders`); one that decodes regions gets exactly each crop
   box, the others whole images; refused streams are decoded on the CPU (`gpu_decode`);
3. host pixels (raw samples, only their crop box; CPU-decoded JPEGs) and the labels are packed
   with the crop kernel's per-image table into one pinned buffer and sent with one non-blocking
   copy into a device buffer of the same layout:
       [table: N x TABLE_COLUMNS int64][labels: N int64][pixels of the host images, packed]
4. imagenet style: `triton_crops.crop_resize_normalize`, one launch: crop, resize, flip,
   normalise, cast, channels_last, into a fresh output (caching allocator, side stream);
   `crops_reference` where the kernel does not run (CPU devices by default: Triton's CPU
   interpreter is for tests, `crop_kernel=True`). cifar style: normalise + seeded flip/translate
   per (seed, epoch, batch), as its CPU path.

Buffers come in a ring of `slots` (the loader's gpu_prefetch + 1): a slot's pinned and device
buffers and the decoder's output buffers of that slot are reused only after an event recorded
after the slot's last batch has completed (queried first; the producer thread waits on it only
when the ring is full, which never blocks the training thread). The caller gets new tensors
(outputs, a clone of the labels), not views of a slot. Host work is vectorised over the batch;
per image there are only the decoder's own calls and numpy slicing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .augment import batch_generator, flip_translate
from .encoded_bytes import HEADER_BYTES, JPG, EncodedBatch
from .gpu_augment import center_crops, normalize
from .gpu_decode import DecodeCounts, decode_jpegs
from .normalisation import normalised_black
from .seeded_crops import random_crops_and_flips
from .triton_crops import (TABLE_COLUMNS, crop_resize_normalize, crops_reference, fill_table,
                           kernel_usable)

ROW_BYTES = TABLE_COLUMNS * 8


class _Slot:
    def __init__(self):
        self.host: torch.Tensor | None = None    # uint8, pinned when the device is CUDA
        self.device: torch.Tensor | None = None  # uint8, same layout, on the device
        self.event = None                        # recorded after the slot's last batch
        self.keep: list = []                     # decoded device images read by that batch


@dataclass
class DeviceBatches:
    device: torch.device
    style: str
    train: bool
    resolution: int
    crop_ratio: float
    mean: tuple
    std: tuple
    dtype: torch.dtype
    channels_last: bool
    seed: int
    decoder: object = None        # a jpeg_decoders.JpegDecoder (None: raw samples only)
    slots: int = 3
    crop_kernel: bool | None = None  # None: the kernel on CUDA, the reference on the CPU
    region_decode: bool = True    # ask a decoder that can for the crop box only
    pad_black: bool = True        # cifar translate: pad with black (else zeros: the mean)
    counts: DecodeCounts = field(default_factory=DecodeCounts)

    def __post_init__(self):
        self.device = torch.device(self.device)
        # built once: later batches never copy them again
        self._mean = torch.tensor(self.mean, dtype=torch.float32).to(self.device)
        self._std = torch.tensor(self.std, dtype=torch.float32).to(self.device)
        self._pad = normalised_black(self.mean, self.std).to(self.device) if self.pad_black else None
        self._ring = [_Slot() for _ in range(max(1, self.slots))]
        self._turn = 0
        usable = kernel_usable(self.device)
        self.use_kernel = (self.device.type == "cuda" and usable) if self.crop_kernel is None \
            else bool(self.crop_kernel)
        if self.use_kernel and not usable:
            raise ValueError(f"the crop kernel cannot run on {self.device} (CUDA, or the CPU "
                             "under TRITON_INTERPRET=1)")
        self._scratch = torch.empty((0, TABLE_COLUMNS), dtype=torch.int64)

    @property
    def uses_regions(self) -> bool:
        return bool(self.region_decode and self.decoder is not None and self.decoder.regions)

    def __call__(self, rows, labels, epoch: int, batch: int):
        index, slot = self._acquire()
        encoded = EncodedBatch.from_rows(rows)
        n = len(encoded)
        heights, widths = encoded.heights, encoded.widths
        if self.style == "cifar":
            boxes = np.stack([np.zeros_like(heights), np.zeros_like(widths), heights, widths], 1)
            flips = None
        elif self.train:
            boxes, flips = random_crops_and_flips(self.seed, epoch, encoded.indices, heights, widths)
        else:
            boxes, flips = center_crops(heights, widths, self.crop_ratio), None
        images, inner = self._decode(encoded, boxes, index)
        on_host = np.array([isinstance(im, np.ndarray) for im in images], dtype=bool)
        table_dev, labels_dev, pixels_at = self._upload(slot, images, inner, flips, on_host,
                                                        np.asarray(labels).reshape(-1))
        if self.style == "cifar":
            x = self._cifar(slot, images, on_host, pixels_at, epoch, batch)
        elif self.use_kernel:
            layout = torch.channels_last if self.channels_last else torch.contiguous_format
            x = torch.empty((n, 3, self.resolution, self.resolution), dtype=self.dtype,
                            device=self.device, memory_format=layout)
            crop_resize_normalize(table_dev, n, self.resolution, self._mean, self._std, x)
        else:
            views = self._device_views(slot, images, on_host, pixels_at)
            x = crops_reference(views, inner, flips, self.resolution, self._mean, self._std,
                                self.dtype, self.channels_last)
        y = labels_dev.clone()  # the slot's buffer is reused; the caller owns its labels
        self._release(slot, [im for im in images if isinstance(im, torch.Tensor)])
        return x, y

    def _acquire(self):
        index = self._turn
        self._turn = (index + 1) % len(self._ring)
        slot = self._ring[index]
        if slot.event is not None:
            if not slot.event.query():  # the ring is full: wait here, in the producer thread
                slot.event.synchronize()
            slot.event = None
        slot.keep = []
        return index, slot

    def _release(self, slot: _Slot, keep: list) -> None:
        slot.keep = keep
        if self.device.type == "cuda":
            slot.event = torch.cuda.Event()
            slot.event.record(torch.cuda.current_stream(self.device))

    def _decode(self, encoded: EncodedBatch, boxes: np.ndarray, index: int):
        """Image k (a device tensor or a host HWC array) and box k inside it."""
        rows = encoded.rows.numpy()
        heights, widths, lengths = encoded.heights, encoded.widths, encoded.lengths
        n = len(encoded)
        images: list = [None] * n
        inner = np.array(boxes, dtype=np.int64, copy=True)
        jpgs = np.flatnonzero(encoded.modes == JPG)
        for k in np.flatnonzero(encoded.modes != JPG):  # raw: a view of the crop box's pixels
            top, left, h, w = inner[k]
            stored = rows[k, HEADER_BYTES:HEADER_BYTES + lengths[k]]
            images[k] = stored.reshape(heights[k], widths[k], 3)[top:top + h, left:left + w]
        if len(jpgs):
            regions = inner[jpgs] if self.uses_regions else None
            streams = [rows[k, HEADER_BYTES:HEADER_BYTES + lengths[k]] for k in jpgs]
            decoded = decode_jpegs(self.decoder, streams, np.stack([heights[jpgs], widths[jpgs]], 1),
                                   regions, self.mean, self.counts, index)
            for k, image in zip(jpgs, decoded):
                images[k] = image
            if regions is not None:
                inner[jpgs, :2] = 0
        host = np.array([isinstance(im, np.ndarray) for im in images], dtype=bool)
        for k in np.flatnonzero(host & (encoded.modes == JPG)):  # host JPEG pixels: the box only
            top, left, h, w = inner[k]
            images[k] = images[k][top:top + h, left:left + w]
        inner[host, :2] = 0
        return images, inner

    def _upload(self, slot: _Slot, images, inner, flips, on_host, labels):
        """Table, labels and host pixels into the slot's pinned buffer, one copy to the device.
        Returns the table and labels on the device and each host image's byte offset there."""
        n = len(images)
        labels_at = n * ROW_BYTES
        pixels_start = -(-(labels_at + 8 * n) // 64) * 64
        host_ks = np.flatnonzero(on_host)
        sizes = inner[host_ks, 2] * inner[host_ks, 3] * 3
        pixels_at = np.zeros(n, dtype=np.int64)
        pixels_at[host_ks] = pixels_start + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        used = int(pixels_start + sizes.sum())
        self._ensure(slot, used)
        host = slot.host.numpy()
        host[labels_at:labels_at + 8 * n].view(np.int64)[:] = labels
        for k in host_ks:
            h, w = int(inner[k, 2]), int(inner[k, 3])
            host[pixels_at[k]:pixels_at[k] + h * w * 3].reshape(h, w, 3)[...] = images[k]
        table = host[:labels_at].view(np.int64).reshape(n, TABLE_COLUMNS)
        device_ks = np.flatnonzero(~on_host)
        if len(device_ks):
            rows = self._rows(len(device_ks))
            fill_table(rows, [images[k] for k in device_ks], inner[device_ks],
                       None if flips is None else np.asarray(flips)[device_ks])
            table[device_ks] = rows.numpy()
        if len(host_ks):
            table[host_ks, 0] = slot.device.data_ptr() + pixels_at[host_ks]
            table[host_ks, 1] = 1                          # HWC: channels interleaved
            table[host_ks, 2] = 3 * inner[host_ks, 3]      # row stride
            table[host_ks, 3] = 3                          # column stride
            table[host_ks, 4:8] = inner[host_ks]
            table[host_ks, 8] = 0 if flips is None else np.asarray(flips)[host_ks]
            table[host_ks, 9] = 0
        slot.device[:used].copy_(slot.host[:used], non_blocking=True)
        words = slot.device[:pixels_start].view(torch.int64)
        return words[:n * TABLE_COLUMNS].view(n, TABLE_COLUMNS), words[labels_at // 8:labels_at // 8 + n], \
            pixels_at

    def _ensure(self, slot: _Slot, nbytes: int) -> None:
        """Grow the slot's buffers to `nbytes` (geometrically, so that it stays rare). The old
        ones are idle: the slot's last batch has completed."""
        if slot.host is not None and slot.host.numel() >= nbytes:
            return
        old = 0 if slot.host is None else slot.host.numel()
        capacity = -(-max(nbytes, old + old // 2, 1 << 16) // 4096) * 4096
        slot.host = torch.empty(capacity, dtype=torch.uint8, pin_memory=self.device.type == "cuda")
        slot.device = torch.empty(capacity, dtype=torch.uint8, device=self.device)

    def _rows(self, count: int) -> torch.Tensor:
        if self._scratch.shape[0] < count:
            self._scratch = torch.empty((count, TABLE_COLUMNS), dtype=torch.int64)
        return self._scratch[:count]

    def _device_views(self, slot: _Slot, images, on_host, pixels_at) -> list:
        """Every image as a (3, h, w) device tensor (host ones: views of the slot's copy); only
        the paths without the kernel need them."""
        views = []
        for k, image in enumerate(images):
            if on_host[k]:
                h, w = image.shape[:2]
                start = int(pixels_at[k])
                image = slot.device[start:start + h * w * 3].view(h, w, 3).permute(2, 0, 1)
            views.append(image)
        return views

    def _cifar(self, slot: _Slot, images, on_host, pixels_at, epoch: int, batch: int):
        n = len(images)
        h, w = images[0].shape[:2] if on_host[0] else images[0].shape[1:]
        if on_host.all():  # packed back to back, in order: one view of the whole batch
            start = int(pixels_at[0])
            pixels = slot.device[start:start + n * h * w * 3].view(n, h, w, 3).permute(0, 3, 1, 2)
        else:
            pixels = torch.stack(self._device_views(slot, images, on_host, pixels_at))
        x = normalize(pixels.float(), self._mean, self._std, self.dtype, self.channels_last)
        if self.train:
            x = flip_translate(x, batch_generator(self.seed, epoch, batch), fill=self._pad)
        return x
