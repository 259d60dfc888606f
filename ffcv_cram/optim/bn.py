"""Freeze BatchNorm running statistics for the second (perturbed) forward pass.

Setting `track_running_stats = False` on a module in train mode makes every `_BatchNorm` variant
(BatchNorm1d/2d/3d, SyncBatchNorm, LazyBatchNorm) normalise with batch statistics without touching
running_mean, running_var or num_batches_tracked. (The usual momentum=0 trick still increments
num_batches_tracked, and does nothing for cumulative averaging, momentum=None.)

Under torch.compile the attribute is guarded: the frozen pass compiles once into a second graph,
and dynamo keeps both (tests/test_compile.py).
"""
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

_SAVED = "_ffcv_cram_track_running_stats"


def disable_running_stats(model: nn.Module) -> None:
    """Stop every BatchNorm layer of `model` from updating its running statistics."""
    for module in model.modules():
        if isinstance(module, _BatchNorm) and not hasattr(module, _SAVED):
            setattr(module, _SAVED, module.track_running_stats)
            module.track_running_stats = False


def enable_running_stats(model: nn.Module) -> None:
    """Undo `disable_running_stats`: each BatchNorm layer gets back its own setting."""
    for module in model.modules():
        if isinstance(module, _BatchNorm) and hasattr(module, _SAVED):
            module.track_running_stats = getattr(module, _SAVED)
            delattr(module, _SAVED)
