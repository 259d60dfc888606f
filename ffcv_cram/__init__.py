"""ffcv-cram: CrAM training on FFCV pipelines, and one-shot pruning sweeps.

The optimizer API is importable from here (`from ffcv_cram import TopkCrAM, ...`); it is loaded
on first use, so command-line tools that only parse arguments start without importing torch.
"""
import importlib

__version__ = "0.1.0"
__all__ = ["TopkCrAM", "NMTopkCrAM", "SAM", "CosineLR", "disable_running_stats",
           "enable_running_stats"]


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module(".optim", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
