"""A sweep's items split over torchrun's processes: item i runs on rank i % world_size, each on
its own device with the whole validation and calibration sets. The ranks work in rounds (round r:
items r * world_size ... + world_size - 1); after each round every rank's result is gathered, so
that rank 0 reports the progress of the whole sweep and ends up holding every result. One
process is the same loop with a world of one."""
from __future__ import annotations

import math
import time
from collections.abc import Callable

from ..runtime.dist import Context, all_gather


def run_split(items: list, measure: Callable, ctx: Context,
              report: Callable | None = None) -> list | None:
    """[measure(item) for item in items], computed across the ranks. Rank 0 returns the list
    (and calls report(done, total, item, result, rank, seconds) as results arrive); the other
    ranks return None."""
    results: list = [None] * len(items)
    done = 0
    for round_ in range(math.ceil(len(items) / ctx.world_size)):
        i = round_ * ctx.world_size + ctx.rank
        mine = None
        if i < len(items):
            start = time.perf_counter()
            mine = (i, measure(items[i]), time.perf_counter() - start)
        for rank, entry in enumerate(all_gather(mine, ctx)):  # a rank past the end sends None
            if entry is None:
                continue
            index, result, seconds = entry
            results[index] = result
            done += 1
            if report is not None and ctx.is_main:
                report(done, len(items), items[index], result, rank, seconds)
    return results if ctx.is_main else None
