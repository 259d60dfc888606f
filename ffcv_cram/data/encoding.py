"""How images are stored in a .beton (checked before any heavy import or work starts)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_PAGE_SIZE = 1 << 23  # 8 MiB, FFCV's default
WRITE_MODES = ("raw", "jpg", "proportion", "smart")


@dataclass
class Encoding:
    """How images are stored. Invalid combinations are refused by `check()`."""
    write_mode: str = "raw"
    max_resolution: int | None = None
    jpeg_quality: int = 90
    compress_probability: float | None = None
    smart_threshold: int | None = None
    seed: int = 0

    def check(self) -> "Encoding":
        if self.write_mode not in WRITE_MODES:
            raise ValueError(f"write_mode={self.write_mode!r}: must be one of {', '.join(WRITE_MODES)}")
        if self.write_mode == "proportion" and self.compress_probability is None:
            raise ValueError("write_mode=proportion needs --cfg.compress_probability (e.g. 0.5: "
                             "the fraction of images stored as JPEG)")
        if self.compress_probability is not None and not 0 <= self.compress_probability <= 1:
            raise ValueError(f"compress_probability={self.compress_probability}: must be in [0, 1]")
        if self.write_mode == "smart" and not self.smart_threshold:
            raise ValueError("write_mode=smart needs --cfg.smart_threshold (raw bytes above which an "
                             "image is stored as JPEG, e.g. 500000); without it ffcv stores everything raw")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality={self.jpeg_quality}: must be between 1 and 100")
        if self.max_resolution is not None and self.max_resolution < 1:
            raise ValueError(f"max_resolution={self.max_resolution}: must be >= 1 (or 0 for none)")
        return self

    def as_jpeg(self, index: int, image: np.ndarray) -> bool:
        if self.write_mode == "jpg":
            return True
        if self.write_mode == "proportion":
            return np.random.default_rng([self.seed, index]).random() < self.compress_probability
        if self.write_mode == "smart":
            return image.nbytes > self.smart_threshold
        return False

    def page_size(self) -> int:
        """Large enough for one raw image at max_resolution (a sample never spans pages)."""
        if self.max_resolution is None:
            return MIN_PAGE_SIZE
        need = self.max_resolution * self.max_resolution * 3
        return max(MIN_PAGE_SIZE, 1 << (need - 1).bit_length())
