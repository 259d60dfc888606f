"""An FFCV pipeline operation that hands over the stored bytes of each image, undecoded.

FFCV's own image decoders decode on the CPU inside the compiled pipeline. This one copies each
sample's stored bytes (a JPEG stream, or raw HxWx3 pixels for samples written raw) straight
from the .beton into a fixed-size row of the batch buffer, so that decoding can happen elsewhere
(on the GPU). Each row starts with a small header, since an FFCV stage returns a single array:

    uint32 little-endian: [number of bytes, mode (0 jpg, 1 raw), height, width,
                           dataset index (low 32 bits), dataset index (high 32 bits)],
    then the bytes.

The dataset index keys the sample's random crop and flip (`seeded_crops`).

The reading itself runs in FFCV's loader threads, like any other FFCV decoder.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from ffcv.fields.rgb_image import IMAGE_MODES, RGBImageField, SimpleRGBImageDecoder
from ffcv.libffcv import memcpy
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.reader import Reader

HEADER_BYTES = 24
JPG, RAW = IMAGE_MODES["jpg"], IMAGE_MODES["raw"]


def largest_image_bytes(path: str, field: str = "image") -> int:
    """The largest stored image of a .beton, in bytes (the row size the batch buffer needs)."""
    reader = Reader(path)
    names = list(reader.handlers)
    if field not in names or not isinstance(reader.handlers[field], RGBImageField):
        raise ValueError(f"{path}: has no RGB image field '{field}' (fields: {', '.join(names)})")
    pointers = reader.metadata[f"f{names.index(field)}"]["data_ptr"]
    table = reader.alloc_table
    order = np.argsort(table["ptr"])
    sizes = table["size"][order][np.searchsorted(table["ptr"][order], pointers)]
    return int(sizes.max()) if len(sizes) else 0


def _put_u32(row, offset, value):
    for b in range(4):
        row[offset + b] = (value >> (8 * b)) & 255


class EncodedImageBytes(SimpleRGBImageDecoder):
    """Decoder stage for an RGBImageField: outputs (batch, HEADER_BYTES + max_bytes) uint8 rows.

    A subclass of the field's default decoder, which is how FFCV recognises a pipeline's first
    operation as the field's decoder."""

    def __init__(self, max_bytes: int):
        super().__init__()
        self.row_bytes = HEADER_BYTES + int(max_bytes)

    def declare_state_and_memory(self, previous_state):
        shape, dtype = (self.row_bytes,), np.dtype("<u1")
        return (replace(previous_state, jit_mode=True, shape=shape, dtype=dtype),
                AllocationQuery(shape, dtype))

    def generate_code(self):
        read = self.memory_read
        rows = Compiler.get_iterator()
        # shared by every loader (ffcv_fixes memoises compiles and keeps numba's types intact)
        copy, put_u32 = Compiler.compile(memcpy), Compiler.compile(_put_u32)
        header = HEADER_BYTES

        def stored_bytes(batch_indices, destination, metadata, storage_state):
            for k in rows(len(batch_indices)):
                sample = metadata[batch_indices[k]]
                data = read(sample["data_ptr"], storage_state)
                row = destination[k]
                put_u32(row, 0, np.uint32(data.shape[0]))
                put_u32(row, 4, np.uint32(sample["mode"]))
                put_u32(row, 8, np.uint32(sample["height"]))
                put_u32(row, 12, np.uint32(sample["width"]))
                index = np.uint64(batch_indices[k])
                put_u32(row, 16, np.uint32(index & np.uint64(0xFFFFFFFF)))
                put_u32(row, 20, np.uint32(index >> np.uint64(32)))
                copy(data, row[header:])
            return destination[:len(batch_indices)]

        stored_bytes.is_parallel = True
        return stored_bytes


@dataclass
class EncodedBatch:
    """One batch of stored images, as read by `EncodedImageBytes` (CPU, views of FFCV's buffer)."""
    rows: torch.Tensor       # (N, HEADER_BYTES + max_bytes) uint8
    lengths: np.ndarray      # (N,) bytes per sample
    modes: np.ndarray        # (N,) JPG or RAW
    heights: np.ndarray      # (N,)
    widths: np.ndarray       # (N,)
    indices: np.ndarray      # (N,) uint64 dataset index of each sample

    @classmethod
    def from_rows(cls, rows) -> "EncodedBatch":
        rows = torch.as_tensor(rows)
        words = np.ascontiguousarray(rows[:, :HEADER_BYTES].numpy()).view("<u4")
        header = words[:, :4].astype(np.int64)
        indices = words[:, 4].astype(np.uint64) | (words[:, 5].astype(np.uint64) << np.uint64(32))
        return cls(rows, header[:, 0], header[:, 1], header[:, 2], header[:, 3], indices)

    def __len__(self) -> int:
        return len(self.lengths)

    def data(self, k: int) -> torch.Tensor:
        """Sample k's stored bytes: a 1-D uint8 view (JPEG stream or raw HWC pixels)."""
        return self.rows[k, HEADER_BYTES:HEADER_BYTES + int(self.lengths[k])]
