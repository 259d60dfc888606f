"""Shared by the benchmarks: environment facts, timing, atomic JSON results."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from ffcv_cram.atomic import write_text

# gpu_check.py points its sections at a scratch folder, so a check never overwrites committed results
RESULTS = Path(os.environ.get("BENCH_RESULTS_DIR") or Path(__file__).resolve().parent / "results")
REPOSITORY = Path(__file__).resolve().parent.parent


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=Path(__file__).parent).stdout
        return out.stdout.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict:
    """Hardware and versions, saved with every result."""
    env = {
        "code_version": _git_commit(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   cuda=torch.version.cuda)
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, check=True)
            env["driver"] = out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.CalledProcessError, IndexError):
            env["driver"] = "unknown"
    return env


def median_time(fn, repeats: int, warmup: int = 1, sync=None) -> tuple[float, list[float]]:
    """Median wall time of fn() in seconds (after warm-up); `sync` runs before each clock read."""
    times = interleaved({"fn": fn}, repeats, warmup, sync)["fn"]
    return statistics.median(times), times


def save_result(name: str, payload: dict) -> Path:
    """Write bench/results/<name>.json atomically, with the environment; returns its path
    relative to the repository root."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
               "environment": environment(), **payload}
    write_text(str(path), json.dumps(payload, indent=2) + "\n")
    try:  # repository-relative where possible: logs stay portable
        return path.resolve().relative_to(REPOSITORY)
    except ValueError:
        return path


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def interleaved(steps: dict, rounds: int, warmup: int = 2, sync=None) -> dict:
    """Time each callable once per round, in turn, so drift on a shared machine hits all alike."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            if sync:
                sync()
            start = time.perf_counter()
            fn()
            if sync:
                sync()
            times[name].append(time.perf_counter() - start)
    return times


def ratio_stats(times: dict, base: str) -> dict:
    """Per method: median time, and the median / quartiles of each round's ratio to `base`."""
    import numpy as np
    ref = np.array(times[base])
    out = {}
    for name, values in times.items():
        ratios = np.array(values) / ref
        out[name] = {"median_s": statistics.median(values), "ratio": float(np.median(ratios)),
                     "ratio_quartiles": [float(q) for q in np.percentile(ratios, [25, 75])],
                     "ratio_of_totals": float(np.sum(values) / ref.sum())}
    return out


def require_interpreter(flag: str) -> None:
    """A benchmark's CPU script check (`flag`: its option) runs Triton in its interpreter, which
    must be chosen before triton is imported: refuse with one line when it was not."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit(f"error: {flag} runs Triton in its CPU interpreter: set TRITON_INTERPRET=1")
