"""How many CPU threads a process's loaders and torch may use: the usable cores shared fairly.

Under torchrun, several processes share one machine. FFCV's default (`num_workers` <= 0) is
one loader thread per core in every loader of every process, and each FFCV Loader also sets
torch's intra-op thread count to its worker count (when it is built and on every iteration),
overriding the OMP_NUM_THREADS=1 that torchrun sets for several processes per node. Measured on
a 2-core machine (bench/bench_threads.py): 2 processes each running torch's CPU kernels on 2
threads spent about 5x the CPU time of 2 processes with 1 thread each on the same work, spinning
in OpenMP barriers. So:

- loader threads per loader = usable cores / local processes / loaders that iterate at the same
  time (at least 1), unless the user chose `num_workers`;
- torch threads per process = OMP_NUM_THREADS when set, else usable cores / local processes;
  `ImageLoader` sets torch back to this after every call into FFCV that changes it.

Usable cores are the ones this process may run on (its CPU affinity, as `taskset` or a
container's cpuset leave it), not every core of the machine.
"""
from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def _positive_env(name: str) -> int | None:
    try:
        value = int(os.environ.get(name, ""))
    except ValueError:
        return None
    return value if value >= 1 else None


def local_processes() -> int:
    """Processes of this job on this machine: torchrun's LOCAL_WORLD_SIZE, else 1."""
    return _positive_env("LOCAL_WORLD_SIZE") or 1


def loader_threads(num_workers: int = 0, concurrent_loaders: int = 1) -> int:
    """Threads for one loader: `num_workers` when the user chose it (> 0), else this process's
    share of the usable cores divided among the loaders that iterate at the same time."""
    if num_workers > 0:
        return num_workers
    return max(1, usable_cores() // (local_processes() * max(1, concurrent_loaders)))


def torch_threads() -> int:
    """torch's intra-op threads for this process: OMP_NUM_THREADS when set (torchrun sets 1 when
    it starts several processes per node), else this process's share of the usable cores."""
    return _positive_env("OMP_NUM_THREADS") or max(1, usable_cores() // local_processes())


def thread_summary(num_workers: int = 0, concurrent_loaders: int = 1) -> str:
    """One line for the log, e.g. 'loader threads: 1 per loader (2 usable cores, 2 local
    processes); torch threads: 1'."""
    threads = loader_threads(num_workers, concurrent_loaders)
    if num_workers > 0:
        why = "--data.num_workers"
    else:
        cores, procs = usable_cores(), local_processes()
        why = f"{cores} usable core{'s' * (cores != 1)}, {procs} local process{'es' * (procs != 1)}"
        if concurrent_loaders > 1:
            why += f", {concurrent_loaders} loaders at a time"
    return f"loader threads: {threads} per loader ({why}); torch threads: {torch_threads()}"
