"""Numba CPU kernels for the passes of `masks.py`'s radix select (one fused sweep each).

Inputs are 1-D integer views (memory order) of dense float tensors: int32 for float32, int64 for
float64. `abs_mask` clears the sign bit, which turns a float's bit pattern into its magnitude key.
Histograms deal chunks of all tensors round-robin to threads, each with a private histogram (the
fastest form measured); the threshold pass is one call per tensor, whose simple loop vectorises.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

CHUNK = 1 << 18


@numba.njit(parallel=True, nogil=True, cache=True)
def _digit_histogram(arrays, chunk_array, chunk_lo, chunk_hi, nthreads, prefix_shift, prefix,
                     shift, digit_mask, abs_mask):
    hist = np.zeros((nthreads, digit_mask + 1), np.int64)
    nchunks = chunk_array.size
    for t in prange(nthreads):
        for c in range(t, nchunks, nthreads):
            a = arrays[chunk_array[c]]
            for i in range(chunk_lo[c], chunk_hi[c]):
                key = a[i] & abs_mask
                if (key >> prefix_shift) == prefix:
                    hist[t, (key >> shift) & digit_mask] += 1
    return hist.sum(axis=0)


@numba.njit(parallel=True, nogil=True, cache=True)
def _keep_above(a, out, threshold, abs_mask):
    for i in prange(a.size):
        out[i] = (a[i] & abs_mask) > threshold


@numba.njit(parallel=True, nogil=True, cache=True)
def _keep_above_and_zero(a, out, threshold, abs_mask, sign_bit):
    for i in prange(a.size):
        value = a[i]
        keep = (value & abs_mask) > threshold
        out[i] = keep
        # branch-free: keep every bit, or only the sign (+-0.0, as multiplying by 0 gives)
        a[i] = value & (sign_bit | (-np.int64(keep) & abs_mask))


def _chunks(arrays):
    index, lo, hi = [], [], []
    for j, a in enumerate(arrays):
        for start in range(0, a.size, CHUNK):
            index.append(j)
            lo.append(start)
            hi.append(min(a.size, start + CHUNK))
    return np.array(index, np.int64), np.array(lo, np.int64), np.array(hi, np.int64)


class Plan:
    """The key arrays of one selection, reused by every pass."""

    def __init__(self, arrays: list[np.ndarray]):
        self.arrays = arrays
        self.typed = numba.typed.List(arrays)
        self.chunks = _chunks(arrays)
        self.abs_mask = int(np.iinfo(arrays[0].dtype).max)  # all bits but the sign

    def histogram(self, prefix_shift: int, prefix: int, shift: int, width: int) -> np.ndarray:
        """Counts of digit (key >> shift) & (2^width - 1) among keys with key >> prefix_shift == prefix."""
        nthreads = max(1, min(numba.get_num_threads(), len(self.chunks[0])))
        return _digit_histogram(self.typed, *self.chunks, nthreads, prefix_shift, prefix, shift,
                                (1 << width) - 1, self.abs_mask)

    def keep_above(self, threshold: int, outs: list[np.ndarray], zero_pruned: bool) -> None:
        """outs[i] = key > threshold; with zero_pruned, the pruned values become 0.0 in place."""
        for a, out in zip(self.arrays, outs):
            if zero_pruned:
                _keep_above_and_zero(a, out, threshold, self.abs_mask, ~self.abs_mask)
            else:
                _keep_above(a, out, threshold, self.abs_mask)
