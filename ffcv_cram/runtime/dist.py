"""Process setup: under torchrun, one process per device with torch.distributed (meeting in a
store of the group's own, see `group_store`, so that torchrun's restarts and its c10d rendezvous
over several nodes work); otherwise a single process."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .group_store import group_store, served_by_agent


@dataclass
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def resolve_device(name: str, option: str = "--training.device") -> torch.device:
    """`option`: the command-line key that chose `name`, for the error message."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{option}=cuda but no CUDA device is visible; use cpu or auto")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"{option}={name!r}: must be cpu, cuda or auto")
    return torch.device(name)


def setup(device_name: str = "auto", timeout_s: float = 600,
          option: str = "--training.device") -> Context:
    """Join the process group when launched by torchrun (NCCL on GPUs, gloo on the CPU).

    `timeout_s` bounds every wait for the other ranks, at start-up and in each collective: a rank
    whose peer died without closing its connections (a lost node) fails after it, and torchrun
    can restart the group, instead of hanging."""
    device = resolve_device(device_name, option)
    if not launched_by_torchrun():
        return Context(device=device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPUs are "
                             "visible; use --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=timeout_s)
        if served_by_agent():
            dist.init_process_group(backend, store=group_store(rank, timeout), rank=rank,
                                    world_size=world, timeout=timeout)
        else:  # rank 0 serves a store at the MASTER_PORT chosen for this group
            dist.init_process_group(backend, init_method="env://", timeout=timeout)
    return Context(rank, world, local_rank, device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: list[float], ctx: Context) -> list[float]:
    """Element-wise sum of a small list of numbers over all ranks."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64,
                     device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def all_gather_str(value: str, ctx: Context) -> list[str]:
    """Every rank's `value`, in rank order."""
    return all_gather(value, ctx)


def all_gather(value, ctx: Context) -> list:
    """Every rank's `value` (anything picklable), in rank order."""
    if not ctx.distributed:
        return [value]
    values: list = [None] * ctx.world_size
    dist.all_gather_object(values, value)
    return values


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def broadcast_buffers(module: torch.nn.Module, ctx: Context) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics), as a DDP forward would.

    Each training forward updates the running statistics from the rank's own batch; DDP copies
    rank 0's over only at the start of the next forward. Before evaluating the unwrapped model,
    this makes every rank evaluate the model that rank 0 saves. One collective per dtype.
    """
    if not ctx.distributed:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for buffer in module.buffers():
        by_dtype.setdefault(buffer.dtype, []).append(buffer)
    with torch.no_grad():
        for buffers in by_dtype.values():
            flat = torch.cat([b.reshape(-1) for b in buffers])
            dist.broadcast(flat, src=0)
            for b, values in zip(buffers, flat.split([b.numel() for b in buffers])):
                b.copy_(values.view(b.shape))


def is_main_process() -> bool:
    """Whether this process speaks for the run: rank 0, or the only process (also after teardown)."""
    return not launched_by_torchrun() or int(os.environ["RANK"]) == 0
