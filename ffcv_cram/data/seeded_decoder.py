"""FFCV decoder op: RandomResizedCrop + horizontal flip drawn per (seed, epoch, sample index).

It replaces FFCV's RandomResizedCropRGBImageDecoder + RandomHorizontalFlip in the CPU training
pipeline, whose draws cannot be seeded. Decoding and resizing are FFCV's own (libjpeg-turbo, then
OpenCV's INTER_AREA via `libffcv.resize_crop`); the box and the flip come from `seeded_crops`,
the rule the GPU path uses too. The flip is a swap of columns in the output, in place, for the
flipped half only (FFCV's flip op copies every image once more).

The epoch reaches the compiled code through memory, not through a captured array: FFCV compiles a
Loader's pipeline once, and numba freezes an array the code refers to into a constant. The op
owns a one-element int64 array; the compiled code holds its address and loads the current value
at the start of every batch. `set_epoch` writes it before FFCV's epoch thread starts (the thread
start orders the write before every read). The array lives as long as the op, and the op as long
as the Loader's graph that holds the compiled code. The address is a constant of that code, so
each new op compiles its decoder anew (`ffcv_fixes` memoises every other pipeline stage).
"""
from __future__ import annotations

import numpy as np
from ffcv.fields.rgb_image import IMAGE_MODES, ResizedCropRGBImageDecoder
from ffcv.libffcv import imdecode, resize_crop
from ffcv.pipeline.compiler import Compiler
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .seeded_crops import MASK64, RATIO, SCALE, random_crop, random_flip, sample_key


@intrinsic
def _load_int64(typingctx, address):
    """The int64 stored at integer `address` (the epoch cell of a SeededRandomResizedCrop)."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.load(builder.inttoptr(args[0], ir.IntType(64).as_pointer()))
    return types.int64(address), codegen


@njit(nogil=True)
def _flip_in_place(image):
    """Reverse the columns of an (H, W, C) image."""
    height, width, channels = image.shape
    for y in range(height):
        for x in range(width // 2):
            mirror = width - 1 - x
            for c in range(channels):
                image[y, x, c], image[y, mirror, c] = image[y, mirror, c], image[y, x, c]


class SeededRandomResizedCrop(ResizedCropRGBImageDecoder):
    """Decoder for an RGBImageField: (N, size, size, 3) uint8 RandomResizedCrops, each flipped
    with probability 1/2, drawn from (seed, epoch, dataset index). Call `set_epoch` before each
    epoch (ImageLoader does); `output_size` may change between epochs, as with FFCV's decoder."""

    def __init__(self, output_size, seed: int, scale=SCALE, ratio=RATIO):
        super().__init__(output_size)
        self.seed, self.scale, self.ratio = seed, scale, ratio
        self._epoch = np.zeros(1, dtype=np.int64)  # read by the compiled code, by address

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch

    @property
    def get_crop_generator(self):  # abstract in FFCV's base class; the crop is drawn below
        return random_crop

    def generate_code(self):
        jpg = IMAGE_MODES["jpg"]
        read = self.memory_read
        rows = Compiler.get_iterator()
        decode_jpeg, resize = Compiler.compile(imdecode), Compiler.compile(resize_crop)
        seed = np.uint64(self.seed & MASK64)
        scale_low, scale_high = float(self.scale[0]), float(self.scale[1])
        ratio_low, ratio_high = float(min(self.ratio)), float(max(self.ratio))
        epoch_address = self._epoch.ctypes.data

        def decode(batch_indices, storage, metadata, storage_state):
            destination, scratch = storage
            epoch = _load_int64(epoch_address)
            for k in rows(len(batch_indices)):
                index = batch_indices[k]
                sample = metadata[index]
                data = read(sample["data_ptr"], storage_state)
                height, width = np.uint32(sample["height"]), np.uint32(sample["width"])
                if sample["mode"] == jpg:
                    image = scratch[k]
                    decode_jpeg(data, image, height, width, height, width, 0, 0, 1, 1, False, False)
                    image = image.reshape(-1)[:3 * height * width].reshape(height, width, 3)
                else:
                    image = data.reshape(height, width, 3)
                key = sample_key(seed, epoch, index)
                top, left, h, w = random_crop(key, height, width, scale_low, scale_high,
                                              ratio_low, ratio_high)
                resize(image, top, top + h, left, left + w, destination[k])
                if random_flip(key):
                    _flip_in_place(destination[k])
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode
