"""Faster backends of `ffcv_cram.sparsity.masks` and the CrAM step: numba on the CPU
(`cpu_select`), Triton on CUDA (`triton_bracket` + `triton_fallback`: a global threshold;
`triton_select`: the radix passes, uniform sparsity; `triton_nm`; `triton_step`: the step's
passes and the plan that launches them).

They compute exactly what the torch path computes and are tested equal to it. Set
FFCV_CRAM_KERNELS=0 to force the plain torch path everywhere (for debugging or comparison).
"""
from __future__ import annotations

import os

_cpu_usable: bool | None = None


def kernels_enabled() -> bool:
    return os.environ.get("FFCV_CRAM_KERNELS", "1").strip().lower() not in ("0", "false", "no", "off")


def cpu_kernels_usable() -> bool:
    """Numba kernels run only on a thread-safe threading layer (tbb or omp): FFCV's loader thread
    runs parallel numba code at the same time, which the `workqueue` layer does not survive."""
    global _cpu_usable
    if not kernels_enabled():
        return False
    if _cpu_usable is None:
        try:
            import numba
            import numpy as np

            from .cpu_select import Plan
            Plan([np.zeros(4, np.int32)]).histogram(31, 0, 16, 15)  # compile + start the pool
            _cpu_usable = numba.threading_layer() in ("tbb", "omp")
        except Exception:  # numba missing or broken: the torch path still works
            _cpu_usable = False
    return _cpu_usable
