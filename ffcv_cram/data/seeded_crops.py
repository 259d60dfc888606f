"""RandomResizedCrop boxes and horizontal flips keyed by (seed, epoch, sample index): the one
sampling rule of both decode paths.

FFCV's RandomResizedCrop and RandomHorizontalFlip draw from numba's per-thread generators, which
are seeded from entropy, so no run can be replayed. Here every draw is a counter-based random
number: splitmix64 outputs of a state mixed from the key, so a sample's crop and flip depend on
(seed, epoch, dataset index) and nothing else -- not on the loader thread, the batch, the rank or
how many samples came before. The CPU decoder (`seeded_decoder`) calls `sample_key`,
`random_crop` and `random_flip` inside FFCV's compiled pipeline; the GPU path calls them through
`random_crops_and_flips`, so both use the same crops for the same sample.

Distribution: FFCV's `get_random_crop` (torchvision's RandomResizedCrop): up to ten attempts at
an area fraction uniform in `scale` and a log-uniform aspect ratio in `ratio`, rounded half to
even; the first box that fits gets a uniform position; if none fits, the whole image clamped to
the ratio range, centred. The flip has probability 1/2. Draw numbers: 2a and 2a+1 for attempt a,
then the top and left position, then the flip.
"""
from __future__ import annotations

import numpy as np
from numba import njit

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
ATTEMPTS = 10
_TOP_DRAW, _LEFT_DRAW, _FLIP_DRAW = 2 * ATTEMPTS, 2 * ATTEMPTS + 1, 2 * ATTEMPTS + 2
MASK64 = 2**64 - 1

# splitmix64's constants; every operand is uint64, so numba never promotes to float64 or int64
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1, _MUL2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S11, _S27, _S30, _S31 = np.uint64(11), np.uint64(27), np.uint64(30), np.uint64(31)
_UNIT = 1.0 / 2.0**53


@njit(nogil=True)
def _mix(z):
    """splitmix64's finaliser: every input bit flips about half of the output bits."""
    z = (z ^ (z >> _S30)) * _MUL1
    z = (z ^ (z >> _S27)) * _MUL2
    return z ^ (z >> _S31)


@njit(nogil=True)
def sample_key(seed, epoch, index):
    """The generator state of one sample in one epoch (seed as an unsigned 64-bit value)."""
    state = _mix(np.uint64(seed) + _GOLDEN)
    state = _mix(state + np.uint64(epoch) * _GOLDEN)
    return _mix(state + np.uint64(index) * _GOLDEN)


@njit(nogil=True)
def _uniform(key, draw):
    """Draw number `draw` of the sample: a float64 in [0, 1) with 53 random bits."""
    return np.float64(_mix(key + np.uint64(draw + 1) * _GOLDEN) >> _S11) * _UNIT


@njit(nogil=True)
def random_crop(key, height, width, scale_low, scale_high, ratio_low, ratio_high):
    """(top, left, crop height, crop width) of RandomResizedCrop for a height x width image."""
    height, width = np.int64(height), np.int64(width)
    area = np.float64(height) * np.float64(width)
    log_low, log_high = np.log(ratio_low), np.log(ratio_high)
    for attempt in range(ATTEMPTS):
        target = area * (scale_low + (scale_high - scale_low) * _uniform(key, 2 * attempt))
        aspect = np.exp(log_low + (log_high - log_low) * _uniform(key, 2 * attempt + 1))
        w = np.int64(np.rint(np.sqrt(target * aspect)))
        h = np.int64(np.rint(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = np.int64(_uniform(key, _TOP_DRAW) * np.float64(height - h + 1))
            left = np.int64(_uniform(key, _LEFT_DRAW) * np.float64(width - w + 1))
            return top, left, h, w
    in_ratio = np.float64(width) / np.float64(height)
    h, w = height, width
    if in_ratio < ratio_low:
        h = np.int64(np.rint(np.float64(width) / ratio_low))
    elif in_ratio > ratio_high:
        w = np.int64(np.rint(np.float64(height) * ratio_high))
    return (height - h) // 2, (width - w) // 2, h, w


@njit(nogil=True)
def random_flip(key):
    return _uniform(key, _FLIP_DRAW) < 0.5


@njit(nogil=True)
def _crops_and_flips(seed, epoch, indices, heights, widths, scale_low, scale_high, ratio_low,
                     ratio_high, boxes, flips):
    for k in range(len(indices)):
        key = sample_key(seed, epoch, indices[k])
        boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3] = random_crop(
            key, heights[k], widths[k], scale_low, scale_high, ratio_low, ratio_high)
        flips[k] = random_flip(key)


def random_crops_and_flips(seed: int, epoch: int, indices, heights, widths, scale=SCALE,
                           ratio=RATIO) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) int64 boxes (top, left, height, width) and (N,) bool flips of samples `indices`."""
    indices = np.asarray(indices, dtype=np.uint64)
    boxes = np.empty((len(indices), 4), dtype=np.int64)
    flips = np.empty(len(indices), dtype=np.bool_)
    _crops_and_flips(np.uint64(seed & MASK64), np.int64(epoch), indices,
                     np.asarray(heights, dtype=np.int64), np.asarray(widths, dtype=np.int64),
                     float(scale[0]), float(scale[1]), float(min(ratio)), float(max(ratio)),
                     boxes, flips)
    return boxes, flips
