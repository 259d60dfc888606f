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

Modes: 'default' and 'max-autotune-no-cudagraphs' (autotuned kernels, longer compile), and for
training on CUDA 'reduce-overhead': inductor's kernels replayed as CUDA graphs (cudagraph trees),
forward and backward, one launch per graph instead of one per kernel; the input batch is copied
into the graph's static buffer. Its outputs live in buffers the next replay overwrites, so the
train step marks where each pass begins (`TrainStep`; what it keeps of a pass is computed outside
the graphs); eval does not offer it. On the CPU it would silently run without graphs, so it is
refused there.

Under DDP (the compiled module wrapped by DistributedDataParallel, or the other way round), dynamo
sees the active DDP module and its DDPOptimizer splits each graph at DDP's bucket boundaries, so
that a bucket's all-reduce starts while the backward of the earlier layers still runs (one
compiled backward would hand every gradient over at its very end). That is torch's default
(`torch._dynamo.config.optimize_ddp`); tests/test_compile.py checks that the split happens.
"""
from __future__ import annotations

import os
import shutil

import torch
from torch import nn

from ..choices import GRAPH_COMPILE_MODES, TRAIN_COMPILE_MODES


def compile_model(model: nn.Module, mode: str = "default", graphs: int | None = None,
                  workers: int | None = None) -> nn.Module:
    """A compiled wrapper around `model` (which stays usable eagerly and shares its parameters
    and buffers). `graphs`: how many variants the caller will run (shapes x module states); dynamo's
    per-function limit is raised to that when it is lower, since past it dynamo silently runs
    the function eagerly. `workers`: inductor's compile processes for this whole process (None:
    inductor's default, one per core, or TORCHINDUCTOR_COMPILE_THREADS); several training
    processes on one machine should share its cores (on 2 cores, two DDP processes with a pool of
    2 workers each took 50 s for a first step that took 13 s with one worker each)."""
    if mode not in TRAIN_COMPILE_MODES:
        raise ValueError(f"mode={mode!r}: must be one of {', '.join(TRAIN_COMPILE_MODES)}")
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


def replays_graphs(mode: str) -> bool:
    """True for the modes whose compiled model replays CUDA graphs."""
    return mode in GRAPH_COMPILE_MODES


def compile_problem(device: torch.device, mode: str = "default") -> str | None:
    """Why torch.compile cannot run here (None: it can), said before any work starts."""
    from torch._dynamo.eval_frame import is_dynamo_supported
    if not is_dynamo_supported():
        return (f"torch.compile is not supported by this Python / torch {torch.__version__}; "
                "train without --training.compile")
    if replays_graphs(mode) and device.type != "cuda":
        return (f"mode {mode} replays CUDA graphs and the device is {device.type}; use "
                "--training.compile_mode=default (or train on a CUDA GPU)")
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
