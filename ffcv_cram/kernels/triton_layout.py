"""Device tables that let one Triton launch sweep a whole list of tensors, without concatenating them.

A launch's programs each take one chunk of one tensor: `chunk_tensor[c]`, `chunk_start[c]`. The
tensors are addressed through tables of raw device addresses (one int64 per tensor), so scratch
buffers, gradients and masks of the same shapes reuse the same layout tables. Tables are cached:
parameters, their buffers and (usually) the caching allocator's gradients keep their addresses from
step to step, so a step normally builds nothing and copies nothing to the device.

Tensors must be dense (any permutation of dims, e.g. channels_last) with at most 4 dims and fewer
than 2^31 elements (the kernels index inside a tensor in int32: half the registers of int64, and
cheap division for logical offsets). Memory-order sweeps use offsets 0..numel-1 from the data
pointer; logical-order sweeps (the tie rule) map a row-major index to an offset with the sizes and
strides, padded to 4 dims. Chunks start at multiples of the block size, so when every address in a
launch is 16-byte aligned (as fresh torch allocations are) the kernels use 128-bit accesses.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import NamedTuple

import torch

from . import kernels_enabled

MAX_DIMS = 4
MAX_NUMEL = 2**31 - 2**16  # int32 indices, with room for a block past the last chunk start
ALIGNMENT = 16  # bytes: one 128-bit access
_CACHE_SIZE = 64
_layouts: OrderedDict = OrderedDict()
_pointers: OrderedDict = OrderedDict()


def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # missing or broken: the torch path still works
        return False
    return True


def interpreted() -> bool:
    """Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1, read when triton loads)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unusable_reason(device: torch.device, explicit: bool = False) -> str | None:
    """Why the Triton kernels cannot run on this device (None: they can). They apply on CUDA
    automatically; on the CPU only when asked for explicitly and running in the interpreter (how
    the tests compare them with the torch path)."""
    if not kernels_enabled():
        return "FFCV_CRAM_KERNELS=0"
    if not triton_importable():
        return "triton cannot be imported"
    if device.type == "cuda" or (explicit and device.type == "cpu" and interpreted()):
        return None
    return f"tensors on {device} (the kernels run on CUDA; on the CPU only in triton's interpreter)"


def kernels_usable(device: torch.device, explicit: bool = False) -> bool:
    return unusable_reason(device, explicit) is None


def is_dense(t: torch.Tensor) -> bool:
    """Elements fill numel consecutive slots from data_ptr (contiguous in some dim order)."""
    if t.is_contiguous():
        return True
    dims = sorted(range(t.dim()), key=lambda d: (t.stride(d), t.size(d)), reverse=True)
    return t.permute(dims).is_contiguous()


def misfit(tensors, dtype=torch.float32) -> str | None:
    """Why these tensors cannot go through the kernels (None: they can): one device, the dtype,
    dense, <= 4 dims, < 2^31 elements each."""
    if not tensors:
        return "no tensors"
    device = tensors[0].device
    for t in tensors:
        if t.device != device:
            return f"tensors on several devices ({device}, {t.device})"
        if t.dtype != dtype:
            return f"a {t.dtype} tensor (the kernels take {dtype})"
        if t.dim() > MAX_DIMS:
            return f"a tensor with {t.dim()} dims (at most {MAX_DIMS})"
        if not is_dense(t):
            return f"a non-dense tensor of shape {tuple(t.shape)}, strides {t.stride()}"
        if t.numel() > MAX_NUMEL:
            return f"a tensor of {t.numel():,} elements (at most {MAX_NUMEL:,})"
    return None


def tensors_fit(tensors, dtype=torch.float32) -> bool:
    return misfit(tensors, dtype) is None


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape and the same memory order; strides of size-1 dims are ignored (they never move
    the address, and torch sets them freely, e.g. on gradients)."""
    return a.shape == b.shape and all(n == 1 or x == y
                                      for n, x, y in zip(a.shape, a.stride(), b.stride()))


def _padded(values, fill):
    values = list(values)
    return [fill] * (MAX_DIMS - len(values)) + values


def _remember(cache, key, build):
    value = cache.get(key)
    if value is None:
        value = cache[key] = build()
        if len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return value


def _to_device(values, dtype, device):
    table = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":  # pinned + non_blocking: no host synchronisation
        return table.pin_memory().to(device, non_blocking=True)
    return table


class Layout:
    """Shapes, strides, selection groups and chunking of a list of tensors, as device tables.

    `groups[i]` is the selection group of tensor i (-1: swept but not selected). `unit` > 1 chunks
    over runs of `unit` elements (N:M groups) instead of single elements.
    """

    def __init__(self, shapes, strides, groups, device, block: int, unit: int = 1):
        self.count, self.block, self.unit = len(shapes), block, unit
        numel = [int(torch.Size(s).numel()) for s in shapes]
        chunk_tensor, chunk_start, first_chunk = [], [], {}
        for i, n in enumerate(numel):
            if groups[i] >= 0:
                first_chunk.setdefault(groups[i], len(chunk_tensor))
            for start in range(0, n // unit, block):
                chunk_tensor.append(i)
                chunk_start.append(start)
        self.num_chunks = len(chunk_tensor)
        self.num_groups = max(groups, default=-1) + 1
        # int32 throughout: every index and offset inside a tensor is below MAX_NUMEL
        self.numel = _to_device(numel, torch.int32, device)
        self.sizes = _to_device([_padded(s, 1) for s in shapes], torch.int32, device)
        self.strides = _to_device([_padded(s, 0) for s in strides], torch.int32, device)
        self.groups = _to_device(list(groups), torch.int32, device)
        self.chunk_tensor = _to_device(chunk_tensor or [0], torch.int32, device)
        self.chunk_start = _to_device(chunk_start or [0], torch.int32, device)
        self.group_first_chunk = _to_device(
            [first_chunk.get(g, 0) for g in range(max(self.num_groups, 1))], torch.int32, device)


def layout(tensors, groups, block: int, unit: int = 1) -> Layout:
    shapes = tuple(tuple(t.shape) for t in tensors)
    strides = tuple(tuple(t.stride()) for t in tensors)
    device = tensors[0].device
    key = (device, shapes, strides, tuple(groups), block, unit)
    return _remember(_layouts, key, lambda: Layout(shapes, strides, groups, device, block, unit))


class Pointers(NamedTuple):
    table: torch.Tensor  # int64 device table of data addresses (0 for None)
    aligned: bool  # every address a multiple of ALIGNMENT (DDP's bucket-view gradients may not be)


def pointers(tensors, device: torch.device) -> Pointers:
    addresses = tuple(0 if t is None else t.data_ptr() for t in tensors)
    return _remember(_pointers, (device, addresses), lambda: Pointers(
        _to_device(list(addresses), torch.int64, device),
        all(a % ALIGNMENT == 0 for a in addresses)))


def aligned(*tables: Pointers) -> bool:
    return all(t.aligned for t in tables)


def small_table(values, dtype, device) -> torch.Tensor:
    """A cached device table of a few constants (prune counts, rho per tensor)."""
    return _remember(_pointers, (device, dtype, tuple(values)),
                     lambda: _to_device(list(values), dtype, device))
