"""Reading real-world image files as 8-bit RGB arrays, or saying precisely why not.

Converted: CMYK and grayscale JPEGs, a PNG (or any format PIL knows) under a .JPEG name, EXIF
orientation, RGBA / LA / palette images (transparency dropped), 16- and 32-bit grayscale and
float images (scaled to 8 bits). Unreadable: empty files, non-images, truncated or corrupt data.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is bad data, not a grey-padded image
Image.MAX_IMAGE_PIXELS = None  # large images are legitimate here; writers shrink them
_ORIENTATION = 0x0112
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


class BadImage(Exception):
    """An image file that cannot be converted; the message is the reason."""


def _to_8bit(image: Image.Image) -> Image.Image:
    """High-bit-depth single-channel modes scaled (not clipped) to 'L'."""
    array = np.asarray(image)
    if image.mode == "F":
        lo, hi = float(np.nanmin(array)), float(np.nanmax(array))
        scaled = (array - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(array)
        return Image.fromarray(np.nan_to_num(scaled).astype(np.uint8))
    bits = 16 if array.max(initial=0) <= 0xFFFF else 32
    return Image.fromarray((array.astype(np.int64) >> (bits - 8)).clip(0, 255).astype(np.uint8))


def _orient(image: Image.Image) -> Image.Image:
    try:
        orientation = image.getexif().get(_ORIENTATION, 1)
    except Exception:  # malformed EXIF blocks are common and harmless: keep the image as stored
        return image
    method = _TRANSPOSE.get(orientation)
    return image.transpose(method) if method is not None else image


def load_rgb(path: str) -> np.ndarray:
    """The image at `path` as a (height, width, 3) uint8 array; raises BadImage(reason)."""
    try:
        if os.path.getsize(path) == 0:
            raise BadImage("empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "palette images with transparency" notes
            with Image.open(path) as image:
                image.load()  # full decode: truncated or corrupt data fails here
                image = _orient(image)
                if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                    image = _to_8bit(image)
                if image.mode != "RGB":
                    image = image.convert("RGB")
                array = np.asarray(image)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image file (no format recognised)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImage(f"unreadable image data ({err})") from None
    if array.ndim != 3 or array.shape[2] != 3 or min(array.shape[:2]) < 1:
        raise BadImage(f"unexpected decoded shape {array.shape}")
    return np.ascontiguousarray(array)
