"""Decode the JPEGs of a batch with the loader's decoder (`jpeg_decoders`), falling back to the
CPU for the streams it refuses.

A corrupt JPEG must not end a long run: a stream the decoder refuses (or decodes to an
unexpected size) is decoded again on the CPU by FFCV's own decoder (libjpeg-turbo, which reads
e.g. a truncated stream with warnings, as decode='cpu' would), and if that cannot produce the
whole image either, the sample becomes a blank image of the dataset's mean colour (zero after
normalisation). Both are counted; the trainer reports the counts in its epoch log.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ffcv.libffcv import imdecode


@dataclass
class DecodeCounts:
    fallbacks: int = 0  # JPEGs the device decoder refused, decoded on the CPU instead
    failures: int = 0   # samples no decoder could read, replaced by a blank image


def decode_jpegs(decoder, streams: list, sizes: np.ndarray, regions: np.ndarray | None,
                 blank_colour, counts: DecodeCounts, slot: int = 0) -> list:
    """One image per stream: the decoder's (a (3, h, w) device tensor or an (h, w, 3) host array)
    or, where it refused, the CPU's or a blank one (host arrays). With `regions`, image k is box k
    of the stored image (the decoder must have `regions`); else the whole stored image."""
    images = decoder.decode(streams, sizes, regions, slot) if streams else []
    for k, image in enumerate(images):
        want = tuple(regions[k][2:]) if regions is not None else tuple(sizes[k])
        got = None if image is None else (  # (height, width, channels)
            tuple(image.shape) if isinstance(image, np.ndarray) else
            tuple(image.shape[1:]) + tuple(image.shape[:1]))
        if got is None or tuple(int(v) for v in got) != tuple(int(v) for v in want) + (3,):
            images[k] = cpu_fallback(streams[k], sizes[k], None if regions is None else regions[k],
                                     blank_colour, counts)
    return images


def cpu_fallback(stream: np.ndarray, size, region, blank_colour, counts: DecodeCounts) -> np.ndarray:
    """(h, w, 3) host pixels of the stream's region (or whole image), or a blank one."""
    height, width = int(size[0]), int(size[1])
    top, left, h, w = (0, 0, height, width) if region is None else (int(v) for v in region)
    decoded = decode_whole_on_cpu(stream, height, width)
    if decoded is not None:
        counts.fallbacks += 1
        return decoded[top:top + h, left:left + w]
    counts.failures += 1
    colour = np.rint(np.asarray(blank_colour, dtype=np.float64)).astype(np.uint8)
    return np.broadcast_to(colour, (h, w, 3))


def decode_whole_on_cpu(stream: np.ndarray, height: int, width: int) -> np.ndarray | None:
    """(H, W, 3) pixels, or None unless the decoder wrote every pixel. Its status cannot tell a
    stream read with warnings from an unreadable one, so it decodes into buffers prefilled with
    0 and with 255: only pixels it really wrote agree."""
    outputs = []
    for fill in (0, 255):
        out = np.full((height, width, 3), fill, np.uint8)
        imdecode(stream, out, height, width, height, width, 0, 0, 1, 1, False, False)
        outputs.append(out)
    return outputs[0] if np.array_equal(*outputs) else None
