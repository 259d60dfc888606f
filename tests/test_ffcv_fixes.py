"""ffcv_fixes: building loaders leaves numba's types intact, equal pipelines compile once, and
loaders rebuilt in every configuration deliver the same batches without a numba traceback
(pytest turns an unraisable exception from a collected dispatcher into an error)."""
import gc

import numpy as np

import numba as nb
import torch

from ffcv_cram.data import ffcv_fixes
from ffcv_cram.data.loader_options import LoaderOptions
from ffcv_cram.data.pipelines import ImageLoader
from indexed import write_indexed

CONFIGS = [dict(style=style, train=train, resolution=resolution)
           for style in ("imagenet", "cifar") for train in (True, False) for resolution in (16, 24)]


def batches(beton, style, **config):
    loader = ImageLoader(beton, batch_size=4, **config,
                         options=LoaderOptions(style=style, num_workers=1))
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loaders_leave_numbas_interned_types_alone(tmp_path):
    bytes_type = nb.uint8[::1]
    key, hashed = bytes_type.key, hash(bytes_type)
    batches(write_indexed(tmp_path / "v.beton", 13), style="cifar", train=False)
    assert nb.uint8[::1] is bytes_type and bytes_type.mutable
    assert (bytes_type.key, hash(bytes_type)) == (key, hashed)


def shared_compiles() -> int:
    """Functions compiled so far, less the seeded crop's decoders: each bakes the address of its
    own op's epoch cell, so a rebuilt op compiles anew unless its cell lands at a freed address."""
    return sum("SeededRandomResizedCrop" not in code.__qualname__
               for code in ffcv_fixes.compiled_functions())


def test_rebuilt_loaders_share_compiled_code_and_agree(tmp_path):
    beton = write_indexed(tmp_path / "v.beton", 13)
    first = {i: batches(beton, **c) for i, c in enumerate(CONFIGS)}
    compiled = shared_compiles()
    gc.collect()  # the first loaders' dispatchers would be finalised here without the fix
    for i, config in reversed(list(enumerate(CONFIGS))):
        again = batches(beton, **config)
        assert len(again) == len(first[i])
        for (x, y), (x0, y0) in zip(again, first[i]):
            assert torch.equal(x, x0) and torch.equal(y, y0)
    assert shared_compiles() == compiled  # nothing compiled twice
    gc.collect()


def test_compile_key_tells_closures_apart():
    def make(scale, table):
        def f(x):
            return x * scale + table[0]
        return f
    key = lambda f: ffcv_fixes.compile_key(f, None, False)  # noqa: E731
    assert key(make(2, np.ones(3))) == key(make(2, np.ones(3)))  # equal values: one compile
    assert key(make(2, np.ones(3))) != key(make(3, np.ones(3)))
    assert key(make(2, np.ones(3))) != key(make(2, np.zeros(3)))
    assert key(make(2, np.ones(3, np.float32))) != key(make(2, np.ones(3)))
