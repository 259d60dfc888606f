"""torch.compile for a model, and the plain module behind any wrapper (for state_dicts).

Only the model is compiled (forward, and through AOTAutograd its backward); optimizer steps,
masks and the fused Triton step stay eager and change the parameters in place, which compiled
graphs take as inputs, so weight updates, pruning and `load_state_dict` never recompile.

Graphs are static (`dynamic=False`): one per input shape and per module state that the forward
branches on. For training that is one per resolution, times two for the two-pass optimizers (the
second pass runs with BatchNorm statistics frozen, `track_running_stats=False`; dynamo guards on
that attribute, compiles the frozen variant once, then keeps both and picks per call).

Evaluating a compiled model: adds one graph for the eval mode and one for a smaller last batch.
Run BatchNorm tuning on the plain module: through the compiled one, cumulative averaging
(momentum=None) reads num_batches_tracked on the host, a graph break in every BatchNorm layer.

Modes: 'default' and 'max-autotune-no-cudagraphs' (autotuned kernels, longer compile). The
CUDA-graph modes are left out: their outputs live in buffers the next replay overwrites, and a
step keeps the first pass's loss and logits while the second pass runs.
"""
from __future__ import annotations

import os
import shutil

import torch
from torch import nn

from ..choices import COMPILE_MODES


def compile_model(model: nn.Module, mode: str = "default", graphs: int | None = None,
                  workers: int | None = None) -> nn.Module:
    """A compiled wrapper around `model` (which stays usable eagerly and shares its parameters
    and buffers). `graphs`: how many variants the caller will run (shapes x module states); dynamo's
    per-function limit is raised to that when it is lower, since past it dynamo silently runs
    the function eagerly. `workers`: inductor's compile processes for this whole process (None:
    inductor's default, one per core, or TORCHINDUCTOR_COMPILE_THREADS); several training
    processes on one machine should share its cores (on 2 cores, two DDP processes with a pool of
    2 workers each took 50 s for a first step that took 13 s with one worker each)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"mode={mode!r}: must be one of {', '.join(COMPILE_MODES)}")
    if graphs is not None and graphs > torch._dynamo.config.cache_size_limit:
        torch._dynamo.config.cache_size_limit = graphs
    if workers is not None and "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ:
        import torch._inductor.config as inductor_config
        inductor_config.compile_threads = max(1, int(workers))
    return torch.compile(model, mode=mode, dynamic=False)


def plain_module(model: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel / torch.compile wrappers, in any nesting: its
    state_dict has no 'module.' or '_orig_mod.' prefixes."""
    while True:
        if isinstance(getattr(model, "module", None), nn.Module):  # DDP, DataParallel
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


def graph_count() -> int:
    """Graphs dynamo has captured in this process (all models): one per model variant, and one
    more at every recompile. (DDP's split of a graph into buckets happens after the count;
    dynamo's frame counter, by contrast, grew by 4 under DDP on ResNet-20.)"""
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


def compile_problem(device: torch.device) -> str | None:
    """Why torch.compile cannot run here (None: it can), said before any work starts."""
    from torch._dynamo.eval_frame import is_dynamo_supported
    if not is_dynamo_supported():
        return (f"torch.compile is not supported by this Python / torch {torch.__version__}; "
                "train without --training.compile")
    if device.type == "cuda":
        from torch.utils._triton import has_triton
        if not has_triton():
            return "torch.compile on CUDA needs triton (pip install triton)"
        return None
    try:  # inductor's CPU backend builds C++
        from torch._inductor.cpp_builder import get_cpp_compiler
        get_cpp_compiler()
    except ImportError:
        if not shutil.which("g++"):
            return "torch.compile on the CPU needs a C++ compiler (g++ or clang++; or set CXX)"
    except Exception as err:  # inductor raises its own InvalidCxxCompiler
        return f"torch.compile on the CPU needs a C++ compiler ({str(err).splitlines()[0]}); " \
               "install g++ or set CXX"
    return None
