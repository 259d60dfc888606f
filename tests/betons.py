"""Small real .beton files for tests, written by the project's own writer: a source whose sample i
is the image pixels(i) with label labels[i] (i unless given), and the images the tests share."""
import numpy as np

import imagefiles
from ffcv_cram.data.encoding import Encoding
from ffcv_cram.data.writer import write_beton


class ImageSource:
    """What write_beton reads: sample i is pixels(i), an H x W x 3 uint8 array, label labels[i]."""

    def __init__(self, pixels, n: int, labels=None):
        self.pixels = pixels
        self.labels = np.arange(n) if labels is None else np.asarray(labels)

    def __len__(self):
        return len(self.labels)

    def load(self, i):
        return self.pixels(i)

    def describe(self, i):
        return f"sample {i}"


def write_test_beton(path, pixels, n: int, labels=None, **encoding) -> str:
    """Samples 0..n-1 of ImageSource(pixels, n, labels) stored with Encoding(**encoding), by one
    writer process; returns the path as a string."""
    write_beton(str(path), ImageSource(pixels, n, labels), range(n), Encoding(**encoding),
                num_workers=1, progress=False)
    return str(path)


def constant(i):
    """32 x 32, every pixel = i: order and image-label pairing are visible in the pixels."""
    return np.full((32, 32, 3), i, np.uint8)


def noise(i):
    """32 x 32 seeded noise: flips, shifts and crops all change the pixels."""
    return np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def varied_size(i):
    """(width, height) of varied_gradient(i): 30-79 x 24-63 px."""
    return 30 + (i * 17) % 50, 24 + (i * 11) % 40


def varied_gradient(i):
    """A noisy gradient of its own size and seed."""
    return imagefiles.gradient(*varied_size(i), seed=i)
