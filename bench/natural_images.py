"""Generated photographs for decode benchmarks, written like ImageNet (about 500 x 375, JPEG q90).

What a JPEG decoder is fed matters: flat colour compresses to almost nothing and decodes far
faster than a photograph. These images have what makes photographs expensive: a 1/f amplitude
spectrum (detail at every scale, correlated across the colour channels), smooth lighting
gradients and hard-edged objects. Image i depends only on (seed, i).
"""
from __future__ import annotations

import numpy as np


def natural_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(height, width, 3) uint8."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    amplitude = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / max(height, width))
    spectrum = rng.standard_normal((4, height, width // 2 + 1)) \
        + 1j * rng.standard_normal((4, height, width // 2 + 1))
    fields = np.fft.irfft2(spectrum * amplitude, s=(height, width))
    fields /= fields.std(axis=(1, 2), keepdims=True)
    # one luminance field shared by the channels, weaker per-channel colour variation
    image = fields[0][..., None] * 38 + np.moveaxis(fields[1:], 0, -1) * 14
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    slope = rng.uniform(-60, 60, (2, 3))
    image += rng.uniform(70, 180, 3) + xx[..., None] * slope[0] + yy[..., None] * slope[1]
    for _ in range(rng.integers(3, 8)):  # objects: ellipses and half-planes with sharp borders
        cy, cx = rng.uniform(0, 1, 2) * (height, width)
        if rng.random() < 0.6:
            ry, rx = rng.uniform(0.05, 0.35, 2) * (height, width)
            inside = ((yy * max(height, width) - cy) / ry) ** 2 + \
                ((xx * max(height, width) - cx) / rx) ** 2 < 1
        else:
            angle = rng.uniform(0, np.pi)
            inside = (xx * max(height, width) - cx) * np.cos(angle) + \
                (yy * max(height, width) - cy) * np.sin(angle) > 0
        image[inside] = image[inside] * 0.5 + rng.uniform(0, 255, 3) * 0.5
    return np.clip(image, 0, 255).astype(np.uint8)


class NaturalImages:
    """A source for `write_beton`: `count` images, a quarter of them portrait, 1000 classes."""

    def __init__(self, count: int, long_side: int = 500, short_side: int = 375, seed: int = 0):
        self.count, self.long_side, self.short_side, self.seed = count, long_side, short_side, seed
        self.labels = np.arange(count) % 1000

    def __len__(self) -> int:
        return self.count

    def load(self, i: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, i])
        portrait = rng.random() < 0.25
        height, width = ((self.long_side, self.short_side) if portrait
                         else (self.short_side, self.long_side))
        return natural_image(rng, height, width)

    def describe(self, i: int) -> str:
        return f"generated image {i}"
