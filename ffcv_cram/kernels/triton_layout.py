"""Device tables that let one Triton launch sweep a whole list of tensors, without concatenating them.

A launch's programs each take one chunk of one tensor: `chunk_tensor[c]`, `chunk_start[c]`. The
tensors are addressed through tables of raw device addresses (one int64 per tensor), so scratch
buffers, gradients and masks of the same shapes reuse the same layout tables. Tables are cached:
parameters, their buffers and (usually) the caching allocator's gradients keep their addresses from
step to step, so a step normally builds nothing and copies nothing to the device.

Tensors must be dense (any permutation of dims, e.g. channels_last) with at most 4 dims. Memory-order
sweeps use offsets 0..numel-1 from the data pointer; logical-order sweeps (the tie rule) map a
row-major index to an offset with the sizes and strides, padded to 4 dims.
"""
from __future__ import annotations

import os
from collections import OrderedDict

import torch

from . import kernels_enabled

MAX_DIMS = 4
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


def kernels_usable(device: torch.device, explicit: bool = False) -> bool:
    """Triton kernels apply on CUDA automatically; on the CPU only when asked for explicitly and
    running in the interpreter (how the tests compare them with the torch path)."""
    if not kernels_enabled() or not triton_importable():
        return False
    if device.type == "cuda":
        return True
    return explicit and device.type == "cpu" and interpreted()


def is_dense(t: torch.Tensor) -> bool:
    """Elements fill numel consecutive slots from data_ptr (contiguous in some dim order)."""
    if t.is_contiguous():
        return True
    dims = sorted(range(t.dim()), key=lambda d: (t.stride(d), t.size(d)), reverse=True)
    return t.permute(dims).is_contiguous()


def tensors_fit(tensors, dtype=torch.float32) -> bool:
    """Whether these tensors can go through the kernels: one device, the dtype, dense, <= 4 dims."""
    if not tensors:
        return False
    device = tensors[0].device
    return all(t.device == device and t.dtype == dtype and t.dim() <= MAX_DIMS and is_dense(t)
               for t in tensors)


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and (a.numel() <= 1 or a.stride() == b.stride())


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
        self.numel = _to_device(numel, torch.int64, device)
        self.sizes = _to_device([_padded(s, 1) for s in shapes], torch.int64, device)
        self.strides = _to_device([_padded(s, 0) for s in strides], torch.int64, device)
        self.groups = _to_device(list(groups), torch.int32, device)
        self.chunk_tensor = _to_device(chunk_tensor or [0], torch.int32, device)
        self.chunk_start = _to_device(chunk_start or [0], torch.int64, device)
        self.group_first_chunk = _to_device(
            [first_chunk.get(g, 0) for g in range(max(self.num_groups, 1))], torch.int64, device)


def layout(tensors, groups, block: int, unit: int = 1) -> Layout:
    shapes = tuple(tuple(t.shape) for t in tensors)
    strides = tuple(tuple(t.stride()) for t in tensors)
    device = tensors[0].device
    key = (device, shapes, strides, tuple(groups), block, unit)
    return _remember(_layouts, key, lambda: Layout(shapes, strides, groups, device, block, unit))


def pointers(tensors, device: torch.device) -> torch.Tensor:
    """int64 device table of the tensors' data addresses (0 for None)."""
    addresses = tuple(0 if t is None else t.data_ptr() for t in tensors)
    return _remember(_pointers, (device, addresses),
                     lambda: _to_device(list(addresses), torch.int64, device))


def small_table(values, dtype, device) -> torch.Tensor:
    """A cached device table of a few constants (prune counts, rho per tensor)."""
    return _remember(_pointers, (device, dtype, tuple(values)),
                     lambda: _to_device(list(values), dtype, device))
