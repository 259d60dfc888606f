"""A real torch.distributed group on the CPU: work(rank, *args) runs in fresh processes joined by
gloo, and what each rank returns comes back to the test through a file."""
import datetime
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank_main(rank, work, world_size, folder, timeout_s, args):
    timeout = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank,
                            world_size=world_size, **timeout)
    try:
        torch.save(work(rank, *args), f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(work, folder, *args, world_size=2, timeout_s=None) -> list:
    """What work(rank, *args) returned on each rank, in rank order. `work` is a module-level
    function (the processes are spawned); `folder` is a fresh one (e.g. tmp_path) that holds the
    group's rendezvous file and the results. timeout_s: how long a collective may wait before it
    fails instead of hanging (torch's default when None)."""
    mp.spawn(_rank_main, args=(work, world_size, str(folder), timeout_s, args), nprocs=world_size,
             join=True)
    return [torch.load(Path(folder) / f"rank{rank}.pt") for rank in range(world_size)]
