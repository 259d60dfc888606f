"""CPU threads under torchrun: 1 process vs 2 processes on the same total work.

The work is eval_sparse.py's batch-norm tuning: ResNet-20 forwards in train mode on batches of
64 generated 32 px images from the loader, with train-time augmentation (cifar style), split
evenly over the processes (--batches in one process, half of them in each of two). Each process
builds its loader as eval_sparse.py does (threads per loader from `ffcv_cram.data.threads`),
warms it up (JIT) and then times the phase; CPU time counts all of the process's threads.

Cases, launched with torchrun and interleaved round by round:
- 1 process, defaults;
- 1 process with one torch thread (OMP_NUM_THREADS=1): the same threads per process as each
  of the 2 processes, for reference;
- 2 processes, defaults (threads per loader = usable cores / 2; torch threads from the
  OMP_NUM_THREADS=1 that torchrun sets);
- 2 processes, oversubscribed as every process was before the thread rule: all usable cores for
  each loader and for torch (--data.num_workers = cores, OMP_NUM_THREADS = cores), which is what
  FFCV's default made of torchrun's processes.
Target: the 2 processes' CPU time (summed) <= 1.3 x the single process's.
The load average is saved with the results: other work on the machine inflates CPU time of
spinning threads, the single process's (more threads per process) most.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TARGET = 1.3


def worker(args) -> None:
    """One process of a case: warm-up, then the timed BNT phase; writes rank<k>.json."""
    import torch
    import torch.distributed as dist

    from ffcv_cram.data.loader_options import LoaderOptions
    from ffcv_cram.data.pipelines import ImageLoader
    from ffcv_cram.data.threads import loader_threads
    from ffcv_cram.models import get_model
    from ffcv_cram.sparsity.bnt import tune_batchnorm

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        dist.init_process_group("gloo")
    loader = ImageLoader(args.beton, train=True, batch_size=64, drop_last=False, seed=rank,
                         options=LoaderOptions(style="cifar",
                                               num_workers=loader_threads(args.num_workers)))
    model = get_model("resnet20", 10).to(memory_format=torch.channels_last)
    tune_batchnorm(model, loader, 2, channels_last=True)  # JIT compile and first batches
    if world > 1:
        dist.barrier()  # the processes compete for the cores during the timed phase
    wall, cpu = time.perf_counter(), time.process_time()
    tune_batchnorm(model, loader, args.batches // world, channels_last=True)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    result = {"rank": rank, "batches": args.batches // world, "wall_s": wall, "cpu_s": cpu,
              "loader_threads": loader.num_workers, "torch_threads": torch.get_num_threads()}
    Path(args.out, f"rank{rank}.json").write_text(json.dumps(result))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def make_dataset(work: Path) -> str:
    from ffcv_cram.data.convert import convert
    from ffcv_cram.data.synthetic import generate
    generate(work / "shapes", classes=10, train_per_class=100, val_per_class=0, size=32)
    beton = str(work / "calib.beton")
    convert("folder", "train", str(work / "shapes" / "train"), beton, progress=False)
    return beton


def run_case(name: str, nproc: int, env_extra: dict, worker_args: list, work: Path) -> dict:
    out = work / f"{name}-{time.monotonic_ns()}"
    out.mkdir()
    env = {**os.environ, **env_extra,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if "OMP_NUM_THREADS" not in env_extra:
        env.pop("OMP_NUM_THREADS", None)  # torchrun's own default decides
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", str(BENCH / "bench_threads.py"), "--worker",
            "--out", str(out), *worker_args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    whole_wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{name}: torchrun failed ({proc.returncode})\n{proc.stderr[-3000:]}")
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    return {"cpu_s": sum(r["cpu_s"] for r in ranks), "wall_s": max(r["wall_s"] for r in ranks),
            "whole_run_wall_s": whole_wall,
            "whole_run_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
            "loader_threads": ranks[0]["loader_threads"], "torch_threads": ranks[0]["torch_threads"],
            "batches_per_process": ranks[0]["batches"], "ranks": ranks}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=80, help="total BNT batches of 64")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--beton", help=argparse.SUPPRESS)
    parser.add_argument("--num-workers", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    sys.path.insert(0, str(ROOT))
    from common import save_result, table
    from ffcv_cram.data.threads import usable_cores

    cores = usable_cores()
    work = Path(tempfile.mkdtemp(prefix="bench_threads_"))
    beton = make_dataset(work)
    given = ["--beton", beton, "--batches", str(args.batches)]
    cases = {
        "1 process": (1, {}, given),
        "1 process, 1 torch thread": (1, {"OMP_NUM_THREADS": "1"}, given),
        "2 processes": (2, {}, given),
        "2 processes, all cores each (before)": (2, {"OMP_NUM_THREADS": str(cores)},
                                                 given + ["--num-workers", str(cores)]),
    }
    load_before = os.getloadavg()
    runs = {name: [] for name in cases}
    for round_ in range(args.rounds):
        for name, (nproc, env, worker_args) in cases.items():
            runs[name].append(run_case(name.split(",")[0].replace(" ", "_"), nproc, env,
                                       worker_args, work))
            r = runs[name][-1]
            print(f"round {round_ + 1}/{args.rounds} {name}: {r['cpu_s']:.1f} s CPU, "
                  f"{r['wall_s']:.1f} s wall", flush=True)
    load_after = os.getloadavg()
    base = runs["1 process"]
    summary = {}
    for name, values in runs.items():
        summary[name] = {
            "cpu_s": statistics.median(v["cpu_s"] for v in values),
            "wall_s": statistics.median(v["wall_s"] for v in values),
            "cpu_ratio": statistics.median(v["cpu_s"] / b["cpu_s"] for v, b in zip(values, base)),
            "wall_ratio": statistics.median(v["wall_s"] / b["wall_s"] for v, b in zip(values, base)),
            "whole_run_cpu_s": statistics.median(v["whole_run_cpu_s"] for v in values),
            "whole_run_wall_s": statistics.median(v["whole_run_wall_s"] for v in values),
            "loader_threads": values[0]["loader_threads"], "torch_threads": values[0]["torch_threads"],
        }
    ok = summary["2 processes"]["cpu_ratio"] <= TARGET
    path = save_result("bench_threads_cpu", {
        "work": "BNT, ResNet-20, cifar style 32 px, batches of 64, split over the processes",
        "total_batches": args.batches, "rounds": args.rounds, "usable_cores": cores,
        "load_average_before": load_before, "load_average_after": load_after,
        "target_cpu_ratio": TARGET, "meets_target": ok, "summary": summary, "runs": runs})
    rows = [[name, s["loader_threads"], s["torch_threads"], f"{s['cpu_s']:.1f}",
             f"{s['cpu_ratio']:.2f}x", f"{s['wall_s']:.1f}", f"{s['wall_ratio']:.2f}x",
             f"{s['whole_run_cpu_s']:.0f} / {s['whole_run_wall_s']:.0f}"]
            for name, s in summary.items()]
    print(table(rows, ["case", "loader thr.", "torch thr.", "CPU s", "CPU vs 1", "wall s",
                       "wall vs 1", "whole run CPU / wall s"]))
    print(f"{args.batches} batches in all; {cores} usable cores; load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(f"target: 2 processes <= {TARGET}x the CPU time of 1: {'met' if ok else 'NOT met'}")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
