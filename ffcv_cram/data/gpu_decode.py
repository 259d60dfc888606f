"""Decode a batch of stored images onto a device: JPEGs with torchvision (nvJPEG on CUDA, batched),
raw samples by copying their pixels over.

A corrupt JPEG must not end a long run: when the batched decode fails, each JPEG of the batch
is decoded alone to find the culprits; those are decoded again on the CPU by FFCV's own decoder
(libjpeg-turbo, which reads e.g. a truncated stream with warnings, as decode='cpu' would), and
if that cannot produce the whole image either, the sample becomes a blank image of the
dataset's mean colour (zero after normalisation). Both are counted; the trainer reports the
counts in its epoch log.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from ffcv.libffcv import imdecode
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

from .encoded_bytes import HEADER_BYTES, JPG, EncodedBatch

# torchvision >= 0.29 warns on every call that its decoders move to TorchCodec; they still work
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of "
                        "TorchVision are deprecated", category=DeprecationWarning)


@dataclass
class DecodeCounts:
    fallbacks: int = 0  # JPEGs the device decoder refused, decoded on the CPU instead
    failures: int = 0   # samples no decoder could read, replaced by a blank image


def check_device_decoder(device: torch.device) -> None:
    """Raise RuntimeError (torchvision's reason) if JPEGs cannot be decoded on `device` at all,
    e.g. a torchvision built without nvJPEG: better than a CPU fallback for every image."""
    if device.type != "cpu":
        decode_jpeg([encode_jpeg(torch.zeros(3, 16, 16, dtype=torch.uint8))], device=device)


def decode_batch(batch: EncodedBatch, device: torch.device, blank_colour,
                 counts: DecodeCounts) -> list[torch.Tensor]:
    """(3, H, W) uint8 images on `device`, one per sample, H and W as stored in the .beton."""
    images: list[torch.Tensor | None] = [None] * len(batch)
    jpegs = [k for k in range(len(batch)) if batch.modes[k] == JPG]
    raws = [k for k in range(len(batch)) if batch.modes[k] != JPG]
    # all raw (e.g. CIFAR): one copy of the whole buffer beats a copy per sample
    rows = batch.rows.to(device, non_blocking=True) if len(raws) == len(batch) else None
    for k in raws:
        data = (batch.data(k) if rows is None
                else rows[k, HEADER_BYTES:HEADER_BYTES + int(batch.lengths[k])])
        pixels = data.view(int(batch.heights[k]), int(batch.widths[k]), 3).permute(2, 0, 1)
        images[k] = pixels.to(device, non_blocking=True)
    if jpegs:
        for k, image in zip(jpegs, _decode_jpegs([batch.data(k) for k in jpegs], device)):
            shape = (3, int(batch.heights[k]), int(batch.widths[k]))
            if image is None or tuple(image.shape) != shape:
                image = _cpu_fallback(batch.data(k), shape, blank_colour, counts).to(device)
            images[k] = image
    return images


def _decode_jpegs(streams: list[torch.Tensor], device: torch.device) -> list:
    """Decoded images, None where a stream cannot be decoded on `device`."""
    try:
        return decode_jpeg(streams, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:  # one bad stream fails the whole batch: find it
        return [_decode_one(stream, device) for stream in streams]


def _decode_one(stream: torch.Tensor, device: torch.device):
    try:
        return decode_jpeg([stream], mode=ImageReadMode.RGB, device=device)[0]
    except RuntimeError:
        return None


def _cpu_fallback(stream: torch.Tensor, shape, blank_colour, counts: DecodeCounts) -> torch.Tensor:
    decoded = _decode_whole_on_cpu(stream.numpy(), shape[1], shape[2])
    if decoded is not None:
        counts.fallbacks += 1
        return torch.from_numpy(decoded).permute(2, 0, 1)
    counts.failures += 1
    colour = torch.tensor(np.rint(blank_colour), dtype=torch.uint8).view(3, 1, 1)
    return colour.expand(shape).clone()


def _decode_whole_on_cpu(stream: np.ndarray, height: int, width: int) -> np.ndarray | None:
    """(H, W, 3) pixels, or None unless the decoder wrote every pixel. Its status cannot tell a
    stream read with warnings from an unreadable one, so it decodes into buffers prefilled with
    0 and with 255: only pixels it really wrote agree."""
    outputs = []
    for fill in (0, 255):
        out = np.full((height, width, 3), fill, np.uint8)
        imdecode(stream, out, height, width, height, width, 0, 0, 1, 1, False, False)
        outputs.append(out)
    return outputs[0] if np.array_equal(*outputs) else None
