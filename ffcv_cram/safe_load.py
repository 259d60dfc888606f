"""Reading .pt files without running code from them.

`torch.load(weights_only=True)` rebuilds tensors and plain Python values (dicts, lists, tuples,
numbers, strings) and refuses, before calling it, anything a pickle asks to call beyond that: a
crafted file that would run a shell command, but also NumPy arrays or arbitrary classes. A file that
needs more is loaded in full only when the caller says the user trusts it.

One exception is allow-listed: NumPy float64 scalars. The reference CrAM checkpoints hold them (its
cosine schedule computes learning rates with `np.cos`, so the optimizer's and the scheduler's saved
`lr` values are np.float64). They are rebuilt by our own function that accepts float64 and nothing
else, registered under the names NumPy 1 and NumPy 2 write into pickles.
"""
from __future__ import annotations

import pickle
import re

import numpy as np
import torch


class UnsafeFile(Exception):
    """A file that only full unpickling can read, which may run code it carries."""

    def __init__(self, path: str, needs: str):
        super().__init__(f"{path}: needs full unpickling ({needs})")
        self.path, self.needs = path, needs

    def explain(self, opt_in: str) -> str:
        """One line for the user: the file, why it was refused and the explicit way past it."""
        return (f"{self.path}: refused: loading it needs full unpickling ({self.needs}), which can "
                f"run any code the file carries; only if you trust this file, re-run with {opt_in}")


def _float64_scalar(module: str):
    def scalar(dtype, data):
        if not (isinstance(dtype, np.dtype) and dtype == np.dtype("<f8") and type(data) is bytes
                and len(data) == 8):
            raise pickle.UnpicklingError(f"NumPy scalar of {dtype}: only float64 is allow-listed")
        return np.frombuffer(data, "<f8")[0]
    # the unpickler finds an allow-listed function by its module and name
    scalar.__module__, scalar.__qualname__ = module, "scalar"
    return scalar


NUMPY_FLOAT64 = [_float64_scalar("numpy.core.multiarray"),  # written by NumPy 1
                 _float64_scalar("numpy._core.multiarray"),  # by NumPy 2
                 np.dtype, type(np.dtype(np.float64))]


def _needs(message: str) -> str:
    """What the pickle asked for, from torch's message (its wording differs across versions)."""
    found = re.search(r"GLOBAL (\S+) was not an allowed global", message)
    if found:
        return f"it refers to {found.group(1)}"
    found = (re.search(r"but got <class '([^']+)'>", message)
             or re.search(r"unrecognized function (\S+)", message))
    if found:
        return f"it refers to {found.group(1)}"
    return "it holds objects other than tensors and plain values"


def load(path: str, trusted: bool = False):
    """The object saved in `path`, on the CPU. Raises UnsafeFile for a file that needs full
    unpickling unless `trusted`; other errors (not a torch file, truncated) pass through."""
    if trusted:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(NUMPY_FLOAT64):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only load failed" not in str(err).lower():
            raise  # a damaged pickle, not a refused one
        raise UnsafeFile(path, _needs(str(err))) from None
