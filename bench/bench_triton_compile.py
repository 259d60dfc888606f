"""Registers, spills and shared memory of every Triton launch variant, compiled for sm_90 and sm_80
without a GPU, with the installed triton and with older ones installed into side folders.

GPU machines often carry an older triton than the registry's (torch 2.11 ships triton 3.6), and
triton versions lower the same kernel very differently, so the table covers both:

    pip install --target build/triton36 triton==3.6.0
    python bench/bench_triton_compile.py --triton build/triton36

The summary checks the targets of `aot_compile.missed_targets` (no spills on sm_90, the passes
that read every weight within 128 registers per thread) on every triton.
"""
from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

from ffcv_cram.kernels.aot_compile import MAX_REGISTERS, TARGETS, missed_targets, run_in_subprocess

from common import save_result, table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triton", action="append", default=[], metavar="FOLDER",
                        help="a folder holding another triton (pip install --target); repeatable")
    parser.add_argument("--name", default="bench_triton_compile",
                        help="result name under bench/results/")
    args = parser.parse_args()
    builds = [None] + [os.path.abspath(folder) for folder in args.triton]
    for folder in builds[1:]:
        if not os.path.isdir(os.path.join(folder, "triton")):
            parser.error(f"--triton {folder}: no triton package there; install one with "
                         f"pip install --target {folder} triton==3.6.0")
    start = time.perf_counter()
    with ThreadPoolExecutor(len(builds)) as pool:  # each build compiles in its own process
        tables = list(pool.map(lambda folder: run_in_subprocess(TARGETS, folder), builds))
    rows = [row for rows in tables for row in rows]
    print(table([[r["variant"], r["triton"], r["arch"], r["num_warps"], r["registers"],
                  f"{r['spill_stores']}/{r['spill_loads']}", r["stack"], r["shared"],
                  f"{r['ld_v4']}/{r['ld']}", f"{r['st_v4']}/{r['st']}",
                  f"{r['atomic_acq_rel']}/{r['atomic_relaxed']}"] for r in rows],
                ["variant", "triton", "target", "warps", "regs", "spill st/ld", "stack", "shared",
                 "ld v4/all", "st v4/all", "atomics acq_rel/relaxed"]))
    misses = missed_targets(rows)
    print(f"\n{len(rows)} compiles ({len({r['variant'] for r in rows})} variants) in "
          f"{time.perf_counter() - start:.0f} s; targets "
          + ("met" if not misses else "missed:\n  " + "\n  ".join(misses)))
    path = save_result(args.name, {"targets": list(TARGETS), "max_registers": MAX_REGISTERS,
                                   "misses": misses, "rows": rows})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
