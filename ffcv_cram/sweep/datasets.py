"""What the sweep reads from a .beton's metadata before loading any image: the labels, and the
stored image sizes, which tell whether the evaluation pipeline would blow the images up."""
from __future__ import annotations

import numpy as np

from ..data.loader_options import DEFAULT_CROP_RATIO

MAX_UPSAMPLING = 2.0
SMALL_IMAGES = 64  # px: a stored short side up to this is CIFAR-sized data


def _field(path: str, name: str) -> np.ndarray:
    from ffcv.reader import Reader
    reader = Reader(path)
    return np.asarray(reader.metadata[f"f{list(reader.handlers).index(name)}"])


def labels_of(path: str) -> np.ndarray:
    return _field(path, "label")


def short_sides(path: str) -> np.ndarray:
    images = _field(path, "image")
    return np.minimum(images["height"], images["width"])


def upsampling_warning(path: str, style: str, resolution: int,
                       crop_ratio: float = DEFAULT_CROP_RATIO) -> str | None:
    """One line when the ImageNet-style evaluation (a centre crop of `crop_ratio` of the short
    side, resized to `resolution`) would enlarge the typical stored image more than 2x."""
    if style != "imagenet":
        return None  # the cifar style evaluates the stored pixels
    side = float(np.median(short_sides(path)))
    factor = resolution / max(1.0, crop_ratio * side)
    if factor <= MAX_UPSAMPLING:
        return None
    fix = ("--data.style=cifar (evaluates the stored pixels)" if side <= SMALL_IMAGES
           else "a lower --data.resolution")
    return (f"warning: {path}: images stored at {side:.0f} px (short side, median) are resized to "
            f"--data.resolution={resolution} by the imagenet style, a {factor:.1f}x upsampling "
            f"that costs compute and changes accuracy; for this data use {fix}")
