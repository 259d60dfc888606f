"""Two repairs to ffcv 1.0.2 (the registry's newest, dormant since 2024), applied once on import.

1. Its memory managers build their state types by mutating numba's *interned* array types
   (`t1 = nb.uint8[::1]; t1.mutable = False`). A numba type hashes by its attributes, so every
   new Loader changes the hash of a type that already keys dicts all over numba: the overloads
   of compiled functions among them. Iterating those dicts then raises KeyError (the "Exception
   ignored in: <finalize object>" traceback when a dead loader's functions are collected, and a
   crashed loader thread when a compiled helper is shared between loaders; ffcv issue #167).
   Here the same types are built as new objects instead: read-only bytes, as the memmap is.
2. Each Loader compiles its whole pipeline anew (about half a second on a small CPU, seconds for
   the first). `Compiler.compile` is memoised on what decides the machine code: the function's
   code object, the values it closes over (compiled helpers by identity: they are memoised too,
   so equal pipelines share them), its defaults, signature, parallelism. A cached function holds
   its closure alive, so an identity in a key is never reused by another object.
"""
from __future__ import annotations

import threading

import numba as nb
import numpy as np
from ffcv.memory_managers.os_cache import OSCacheManager
from ffcv.memory_managers.process_cache.manager import ProcessCacheManager
from ffcv.pipeline.compiler import Compiler

READONLY_BYTES = nb.types.Array(nb.uint8, 1, "C", readonly=True)
OFFSETS = nb.types.Array(nb.uint64, 1, "C")
# small constant arrays (normalisation means, ...) are keyed by value; numba freezes them anyway
VALUE_KEYED_ARRAY_BYTES = 1 << 16


def _os_cache_state_type(self):
    return nb.types.Tuple([READONLY_BYTES, OFFSETS, OFFSETS])


def _os_cache_reader(self):
    def read(address, mem_state):
        size = mem_state[2][np.searchsorted(mem_state[1], address)]
        return mem_state[0][address:address + size]

    return Compiler.compile(read, READONLY_BYTES(nb.uint64, self.state_type))


def _process_cache_state_type(self):
    readonly = lambda dtype, ndim: nb.types.Array(dtype, ndim, "C", readonly=True)  # noqa: E731
    return nb.types.Tuple([readonly(nb.uint8, 2), readonly(nb.uint64, 1),
                           readonly(nb.uint64, 1), readonly(nb.uint32, 1)])


def _value_key(value):
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return type(value), value
    if isinstance(value, tuple):
        return ("tuple",) + tuple(_value_key(v) for v in value)
    if isinstance(value, np.dtype):
        return "dtype", value.str
    if isinstance(value, np.generic):
        return type(value), value.item()
    if isinstance(value, np.ndarray) and value.nbytes <= VALUE_KEYED_ARRAY_BYTES:
        return "array", value.dtype.str, value.shape, value.tobytes()
    return "object", id(value)  # kept alive by the cache entry, so the id stays its own


def compile_key(code, signature, parallel: bool) -> tuple:
    function = getattr(code, "__func__", code)
    cells = tuple(_value_key(cell.cell_contents) for cell in function.__closure__ or ())
    bound_to = _value_key(getattr(code, "__self__", None))
    return (id(function.__code__), id(function.__globals__), cells, bound_to,
            _value_key(function.__defaults__), str(signature), parallel, Compiler.is_enabled)


_compile_uncached = Compiler.compile.__func__
_compiled: dict[tuple, tuple] = {}
_lock = threading.Lock()


def _compile_memoised(cls, code, signature=None):
    parallel = bool(getattr(code, "is_parallel", False)) and cls.num_threads > 1
    key = compile_key(code, signature, parallel)
    with _lock:
        entry = _compiled.get(key)
        if entry is None:
            entry = _compiled[key] = (_compile_uncached(cls, code, signature), code)
    return entry[0]


def compiled_functions() -> list:
    """The Python functions compiled through ffcv's Compiler in this process, one per compile.
    A SeededRandomResizedCrop's decoder bakes its own op's epoch-cell address, so each new op
    compiles its decoder again (unless the cell lands at a freed op's address)."""
    return [code for _, code in _compiled.values()]


if not getattr(Compiler, "_ffcv_cram_fixed", False):
    OSCacheManager.state_type = property(_os_cache_state_type)
    OSCacheManager.compile_reader = _os_cache_reader
    ProcessCacheManager.state_type = property(_process_cache_state_type)
    Compiler.compile = classmethod(_compile_memoised)
    Compiler._ffcv_cram_fixed = True
