"""torchrun fault tolerance, repeated: one of two worker processes is SIGKILLed right after the first
epoch's checkpoint, `torchrun --max-restarts=1` restarts the group, the run resumes from the
checkpoint and must end with a final_weights.pt bit-identical to an uninterrupted 2-process run.

CPU, gloo, ResNet-20 on a generated 4-class dataset (64 training images, 2 steps per epoch,
3 epochs). The killed rank alternates (1, 0, 1, ...): rank 0 also serves the group's store.
Per run: whether torchrun recovered (exit 0, the trainer started twice), whether the weights are
identical, wall time, the CPU time of torchrun and its workers.

    cd bench && python bench_restarts.py [--runs 5] [--timeout 600]
"""
from __future__ import annotations

import argparse
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import REPOSITORY, save_result, table

ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))}
START_LINE = "loader threads:"  # rank 0 prints it once each time the trainer starts


def make_dataset(folder: Path) -> str:
    from ffcv_cram.data.convert import convert
    from ffcv_cram.data.synthetic import generate
    generate(folder / "images", classes=4, train_per_class=16, val_per_class=0, size=32, workers=1)
    path = folder / "train.beton"
    convert("folder", "train", str(folder / "images" / "train"), str(path), num_workers=1,
            progress=False)
    return str(path)


def train_args(dataset: str, folder: Path, epochs: int = 3) -> list[str]:
    """Small and exact: batches of 16 per process (32 over the two), no validation,
    deterministic kernels; waits for the other process fail after 60 s instead of hanging."""
    return [str(REPOSITORY / "train_cifar.py"), f"--data.train_dataset={dataset}",
            "--data.val_dataset=", f"--logging.folder={folder}", f"--training.epochs={epochs}",
            "--training.global_batch_size=32", "--lr.scaling=none", "--lr.warmup_epochs=0",
            "--data.num_workers=1",
            "--training.device=cpu", "--training.deterministic=1", "--training.dist_timeout=60"]


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def start(command: list[str]) -> subprocess.Popen:
    """In a session of its own, so that `stop` ends torchrun and every worker it started."""
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPOSITORY, env=ENV, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str, bool]:
    """(stdout, stderr, timed_out); on time-out the whole session is killed."""
    try:
        out, err = proc.communicate(timeout=timeout)
        return out, err, False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return out, err, True


def worker_pids(agent_pid: int) -> dict[int, int]:
    """{global rank: pid} of the workers a torchrun agent has started (Linux /proc)."""
    workers = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            if parent != agent_pid:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
            workers[int(env[b"RANK"])] = int(entry)
        except (OSError, KeyError, ValueError):  # exited meanwhile, or not a worker
            continue
    return workers


def kill_and_restart(dataset: str, folder: Path, victim: int, timeout: float) -> dict:
    """Run 2 processes under `torchrun --max-restarts=1`, SIGKILL rank `victim` as soon as the
    first checkpoint exists, and wait (at most `timeout` s in all) for torchrun to finish."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = start(torchrun("--nproc_per_node=2", "--max-restarts=1", *train_args(dataset, folder)))
    killed_at = None
    while proc.poll() is None and time.perf_counter() - started < timeout:
        if (folder / "checkpoint_last.pt").exists():
            pid = worker_pids(proc.pid).get(victim)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed_at = time.perf_counter() - started
                break
        time.sleep(0.02)
    out, err, timed_out = finish(proc, max(1.0, timeout - (time.perf_counter() - started)))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"victim": victim, "killed_at_s": killed_at, "returncode": proc.returncode,
            "timed_out": timed_out, "starts": out.count(START_LINE),
            "seconds": time.perf_counter() - started,
            "cpu_seconds": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "stdout": out, "stderr": err}


def last_error(stderr: str) -> str:
    """The last exception line of a failed run's workers, e.g. gloo's connectFullMesh error."""
    errors = [line for line in stderr.splitlines()
              if ("Error:" in line or "Exception:" in line) and "ChildFailedError" not in line]
    return errors[-1].strip() if errors else "(no exception line)"


def same_weights(a: Path, b: Path) -> bool:
    x, y = (torch.load(p / "final_weights.pt") for p in (a, b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run, at most")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        dataset = make_dataset(base)
        started = time.perf_counter()
        reference = start(torchrun("--nproc_per_node=2", *train_args(dataset, base / "whole")))
        _, err, timed_out = finish(reference, args.timeout)
        reference_s = time.perf_counter() - started
        if reference.returncode != 0 or timed_out:
            sys.exit(f"the uninterrupted run failed (exit {reference.returncode}):\n{err[-3000:]}")
        runs = []
        for i in range(args.runs):
            run = kill_and_restart(dataset, base / f"run{i}", victim=(i + 1) % 2, timeout=args.timeout)
            run["recovered"] = run["returncode"] == 0 and run["starts"] == 2
            run["identical"] = run["recovered"] and same_weights(base / "whole", base / f"run{i}")
            stderr, _ = run.pop("stderr"), run.pop("stdout")
            if not run["recovered"]:
                run["failure"] = last_error(stderr)
            runs.append(run)
            print(f"run {i + 1}/{args.runs}: killed rank {run['victim']}, "
                  f"{'recovered' if run['recovered'] else 'FAILED'}, "
                  f"{'bit-identical' if run['identical'] else 'not identical'}, "
                  f"{run['seconds']:.0f} s", flush=True)
    rows = [[i + 1, r["victim"], f"{r['killed_at_s']:.1f}" if r["killed_at_s"] else "-",
             r["returncode"], "yes" if r["recovered"] else "NO", "yes" if r["identical"] else "NO",
             f"{r['seconds']:.1f}", f"{r['cpu_seconds']:.1f}"] for i, r in enumerate(runs)]
    print(table(rows, ["run", "killed rank", "kill at s", "exit", "recovered", "bit-identical",
                       "wall s", "cpu s"]))
    recovered = sum(r["recovered"] for r in runs)
    identical = sum(r["identical"] for r in runs)
    print(f"recovered {recovered}/{len(runs)}, bit-identical {identical}/{len(runs)}; "
          f"uninterrupted run {reference_s:.1f} s, runs with a restart: median "
          f"{statistics.median(r['seconds'] for r in runs):.1f} s")
    path = save_result("bench_restarts_cpu", {
        "scenario": "torchrun --nproc_per_node=2 --max-restarts=1, gloo on the CPU, ResNet-20, "
                    "3 epochs of 2 steps; one worker SIGKILLed after the first checkpoint",
        "uninterrupted_s": reference_s, "recovered": recovered, "identical": identical,
        "runs": runs})
    print(f"saved {path}")
    if recovered < len(runs) or identical < len(runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
