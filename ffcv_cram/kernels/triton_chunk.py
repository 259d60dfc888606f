"""Device helpers shared by the kernels: one program's chunk, its addresses, loads and stores.

Memory-order passes address a chunk from a scalar base pointer plus `tl.arange`, in int32. A full
chunk (every chunk but a tensor's last) is read and written without a mask, so that with an
aligned base (ALIGNED: every address of the launch is 16-byte aligned, checked on the host, and
chunks start at multiples of BLOCK) triton emits 128-bit accesses; the last chunk of a tensor
takes the masked path. Kernels branch once per program on `size == BLOCK` and call their body with
FULL=True or False, a compile-time flag.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def chunk(chunk_tensor, chunk_start, numel, BLOCK: tl.constexpr):
    """(tensor, first index, element count <= BLOCK) of this program's chunk."""
    c = tl.program_id(0)
    t = tl.load(chunk_tensor + c)
    start = tl.multiple_of(tl.load(chunk_start + c), BLOCK)
    return t, start, tl.minimum(tl.load(numel + t) - start, BLOCK)


@triton.jit
def pointer(table, t, dtype: tl.constexpr):
    """Data pointer of tensor t from a table of addresses (alignment unknown)."""
    return tl.load(table + t).to(tl.pointer_type(dtype))


@triton.jit
def base(table, t, start, dtype: tl.constexpr, ALIGNED: tl.constexpr):
    """Address of element `start` of tensor t."""
    address = pointer(table, t, dtype) + start
    if ALIGNED:
        address = tl.multiple_of(address, 16)
    return address


@triton.jit
def load(address, size, FULL: tl.constexpr, BLOCK: tl.constexpr):
    """The chunk's `size` elements from `address` (zeros past them)."""
    index = tl.arange(0, BLOCK)
    if FULL:
        values = tl.load(address + index)
    else:
        values = tl.load(address + index, mask=index < size, other=0)
    return values


@triton.jit
def store(address, values, size, FULL: tl.constexpr, BLOCK: tl.constexpr):
    index = tl.arange(0, BLOCK)
    if FULL:
        tl.store(address + index, values)
    else:
        tl.store(address + index, values, mask=index < size)


@triton.jit
def in_chunk(size, FULL: tl.constexpr, BLOCK: tl.constexpr):
    """Which lanes hold an element (all of them in a full chunk: known at compile time)."""
    if FULL:
        valid = tl.full([BLOCK], 1, tl.int1)
    else:
        valid = tl.arange(0, BLOCK) < size
    return valid


@triton.jit
def logical_offsets(index, sizes, strides, t):
    """Memory offsets of row-major indices `index` of tensor t (sizes/strides padded to 4 dims;
    int32 tables: every offset is below triton_layout.MAX_NUMEL)."""
    s1 = tl.load(sizes + t * 4 + 1)
    s2 = tl.load(sizes + t * 4 + 2)
    s3 = tl.load(sizes + t * 4 + 3)
    i3 = index % s3
    rest = index // s3
    i2 = rest % s2
    rest = rest // s2
    i1 = rest % s1
    i0 = rest // s1
    return (i0 * tl.load(strides + t * 4) + i1 * tl.load(strides + t * 4 + 1)
            + i2 * tl.load(strides + t * 4 + 2) + i3 * tl.load(strides + t * 4 + 3))
