"""The decode='gpu' path of ImageLoader: one FFCV batch of stored bytes -> (images, labels) on a device.

Decoding is `gpu_decode.decode_batch`; augmentation is `gpu_augment` for the imagenet style
(train: RandomResizedCrop + horizontal flip; val: FFCV's centre crop) and
`augment.flip_translate` for the cifar style. Crops and flips are drawn per (seed, epoch, dataset
index) by `seeded_crops`, the rule of the CPU decoder too: the same sample gets the same crop on
either path. The cifar style draws per (seed, epoch, batch), as its CPU path does.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .augment import batch_generator, flip_translate
from .encoded_bytes import EncodedBatch
from .gpu_augment import center_crops, normalize, resized_crops
from .gpu_decode import DecodeCounts, decode_batch
from .seeded_crops import random_crops_and_flips


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
    counts: DecodeCounts = field(default_factory=DecodeCounts)

    def __call__(self, rows, labels: torch.Tensor, epoch: int, batch: int):
        encoded = EncodedBatch.from_rows(rows)
        images = decode_batch(encoded, self.device, self.mean, self.counts)
        if self.style == "cifar":
            x = self._cifar(images, epoch, batch)
        else:
            x = self._imagenet(images, encoded, epoch)
        # (N,) for any N: FFCV hands labels over as (N, 1); squeezing would make N = 1 0-d
        return x, labels.reshape(-1).to(device=self.device, dtype=torch.int64, copy=True)

    def _imagenet(self, images, encoded: EncodedBatch, epoch: int) -> torch.Tensor:
        if self.train:
            boxes, flips = random_crops_and_flips(self.seed, epoch, encoded.indices,
                                                  encoded.heights, encoded.widths)
        else:
            boxes = center_crops(encoded.heights, encoded.widths, self.crop_ratio)
            flips = None
        pixels = resized_crops(images, boxes, self.resolution, flips)
        return normalize(pixels, self.mean, self.std, self.dtype, self.channels_last)

    def _cifar(self, images, epoch: int, batch: int) -> torch.Tensor:
        pixels = torch.stack(images).float()
        x = normalize(pixels, self.mean, self.std, self.dtype, self.channels_last)
        if self.train:
            x = flip_translate(x, batch_generator(self.seed, epoch, batch))
        return x
