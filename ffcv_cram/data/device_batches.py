"""The decode='gpu' path of ImageLoader: one FFCV batch of stored bytes -> (images, labels) on a device.

Decoding is `gpu_decode.decode_batch`; augmentation is `gpu_augment` for the imagenet style
(train: RandomResizedCrop + horizontal flip; val: FFCV's centre crop) and
`augment.flip_translate` for the cifar style. Random draws come from generators seeded by
(seed, epoch, batch, rank), so every augmentation can be replayed, and ranks draw independently.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .augment import batch_generator, flip_translate
from .encoded_bytes import EncodedBatch
from .gpu_augment import center_crops, normalize, random_crops, resized_crops
from .gpu_decode import DecodeCounts, decode_batch


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
    rank: int
    counts: DecodeCounts = field(default_factory=DecodeCounts)

    def __call__(self, rows, labels: torch.Tensor, epoch: int, batch: int):
        encoded = EncodedBatch.from_rows(rows)
        images = decode_batch(encoded, self.device, self.mean, self.counts)
        if self.style == "cifar":
            x = self._cifar(images, epoch, batch)
        else:
            x = self._imagenet(images, encoded, epoch, batch)
        # (N,) for any N: FFCV hands labels over as (N, 1); squeezing would make N = 1 0-d
        return x, labels.reshape(-1).to(device=self.device, dtype=torch.int64, copy=True)

    def _imagenet(self, images, encoded: EncodedBatch, epoch: int, batch: int) -> torch.Tensor:
        if self.train:
            rng = np.random.default_rng([self.seed & (2**63 - 1), epoch, batch, self.rank])
            boxes = random_crops(encoded.heights, encoded.widths, rng)
            flips = rng.random(len(images)) < 0.5
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
