"""Cheaper CrAM (issue 14): which cut of the second pass keeps CrAM+'s sparsity robustness?

Settings: SGD; CrAM+ (reference); interval 2 and 4 with and without reuse; second-pass
fraction 0.5 and 0.25. Each is trained with the real CLIs at the demo's budget (generated
10-class dataset, ResNet-20, 10 epochs, batch 128, rho 0.05; `ffcv_cram.demo`) for each seed,
then pruned one-shot (global 80 / 90 / 95 %) with BNT by eval_sparse.py. Step time relative to
SGD comes from a separate measurement: every setting's TrainStep in one process, interleaved
rounds of 4 steps (a whole schedule period of interval 1, 2 and 4).

    python bench/bench_cheap_cram.py --work bench_work/cheap_cram     (resumable: re-run it)

Every finished (setting, seed) leaves <work>/runs/<setting>/seed<s>/result.json and is skipped on
a re-run. Target: <= 1.5x SGD's step time while keeping >= 90 % of CrAM+'s gain over SGD at 90 %.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import REPOSITORY, interleaved, ratio_stats, save_result, table

sys.path.insert(0, str(REPOSITORY))
from ffcv_cram.atomic import write_text  # noqa: E402
from ffcv_cram.demo import FULL, data_commands, train_command  # noqa: E402

SETTINGS = {  # name: trainer flags (on top of the demo's CrAM+ run)
    "sgd": ["--training.optimizer=sgd"],
    "cram+": [],
    "interval 2": ["--cram.interval=2"],
    "interval 2 + reuse": ["--cram.interval=2", "--cram.reuse=1"],
    "interval 4": ["--cram.interval=4"],
    "interval 4 + reuse": ["--cram.interval=4", "--cram.reuse=1"],
    "fraction 0.5": ["--cram.second_pass_fraction=0.5"],
    "fraction 0.25": ["--cram.second_pass_fraction=0.25"],
}
SPARSITIES = (0.8, 0.9, 0.95)
TARGET = {"time_ratio": 1.5, "gain_kept": 0.9, "at_sparsity": 0.9}


def slug(name: str) -> str:
    return name.replace(" + ", "_").replace(" ", "_").replace("+", "_plus")


THREADS = {"n": 1}  # torch and loader threads of every run (--threads)


def run(argv: list[str], log) -> None:
    log.write("$ " + " ".join(shlex.quote(a) for a in argv) + "\n")
    log.flush()
    # one thread each by default: on a CPU shared with other work, OpenMP threads that spin in
    # barriers waiting for a descheduled sibling cost several times their share (bench_threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS["n"])}
    proc = subprocess.run(argv, cwd=REPOSITORY, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        sys.exit(f"failed (exit {proc.returncode}): {' '.join(argv)}; see {log.name}")


def prepare_data(work: Path, log) -> None:
    if all((work / f"{split}.beton").exists() for split in ("train", "val", "calib")):
        return
    for argv in data_commands(sys.executable, work, FULL):
        run(argv, log)


def train_and_prune(work: Path, name: str, seed: int, log) -> dict:
    folder = work / "runs" / slug(name) / f"seed{seed}"
    done = folder / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    start = time.perf_counter()
    run(train_command(sys.executable, work, FULL, "cpu", folder, *SETTINGS[name],
                      f"--training.seed={seed}", f"--cram.seed={seed}",
                      f"--data.num_workers={THREADS['n']}"), log)
    trained = time.perf_counter()
    run([sys.executable, "eval_sparse.py", f"--eval.checkpoint={folder / 'final_weights.pt'}",
         f"--eval.labels={name}", "--model.arch=resnet20", "--data.style=cifar",
         f"--data.val_dataset={work / 'val.beton'}", f"--data.calib_dataset={work / 'calib.beton'}",
         "--prune.method=global", f"--prune.sparsities={','.join(map(str, SPARSITIES))}",
         f"--bnt.batches={FULL['bnt_batches']}", "--eval.device=cpu",
         f"--data.num_workers={THREADS['n']}",
         f"--out.dir={folder / 'sweep'}"], log)
    rows = json.loads((folder / "sweep" / "results.json").read_text())
    epochs = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    result = {"setting": name, "seed": seed, "dense_top1": rows[0]["dense_top1"],
              "bnt_top1": {f"{r['sparsity']:g}": r["bnt_top1"] for r in rows},
              "pruned_top1": {f"{r['sparsity']:g}": r["pruned_top1"] for r in rows},
              "sparsity_draws": sum(sum(e["sparsity_draws"].values()) for e in epochs),
              "train_epoch_time_s": sum(e["epoch_time_s"] for e in epochs),
              "train_wall_s": trained - start}
    write_text(str(done), json.dumps(result, indent=1) + "\n")
    return result


def step_times(names: list[str], rounds: int) -> dict:
    """Every setting's TrainStep (ResNet-20, batch 128, 32 px, CPU), 4 steps per round, in turn."""
    import copy

    import torch

    from ffcv_cram.models import get_model
    from ffcv_cram.train.optimizer_options import OptimizerOptions
    from ffcv_cram.train.step import TrainStep, make_optimizer
    torch.set_num_threads(THREADS["n"])
    torch.manual_seed(0)
    base = get_model("resnet20", 10).to(memory_format=torch.channels_last).train()
    x = torch.randn(FULL["batch_size"], 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (FULL["batch_size"],))
    steps = {}
    for name in names:
        flags = dict(f.lstrip("-").split("=") for f in SETTINGS[name])
        method = flags.get("training.optimizer", "cram")
        model = copy.deepcopy(base)
        opt = make_optimizer(model.parameters(), OptimizerOptions(
            method=method, lr=0.01, momentum=0.9, weight_decay=5e-4, rho=0.05,
            sparsities=(0.5, 0.7, 0.8, 0.9, 0.95), interval=int(flags.get("cram.interval", 1)),
            reuse=flags.get("cram.reuse") == "1",
            second_pass_fraction=float(flags.get("cram.second_pass_fraction", 1))))
        step = TrainStep(model, opt, method)

        def four(step=step):
            for _ in range(4):
                step(x, y)
        steps[name] = four
    return ratio_stats(interleaved(steps, rounds, warmup=1), "sgd")


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(results: dict, times: dict) -> list[dict]:
    """Mean ± std over seeds per setting. The gain kept at 90 % compares, seed by seed, the
    setting's gain over SGD with CrAM+'s on the same seeds (settings may have fewer seeds)."""
    at = f"{TARGET['at_sparsity']:g}"
    by_seed = {n: {r["seed"]: r["bnt_top1"][at] for r in rs} for n, rs in results.items()}
    rows = []
    for name, rs in results.items():
        seeds = [r["seed"] for r in rs]
        row = {"setting": name, "seeds": seeds,
               "dense_top1": mean_std([r["dense_top1"] for r in rs]),
               "bnt_top1": {s: mean_std([r["bnt_top1"][s] for r in rs])
                            for s in (f"{x:g}" for x in SPARSITIES)},
               "step_time_ratio": times[name]["ratio"] if name in times else None,
               "gain_kept_at_90": None}
        both = [s for s in seeds if s in by_seed.get("sgd", {}) and s in by_seed.get("cram+", {})]
        if both:
            sgd = statistics.mean(by_seed["sgd"][s] for s in both)
            reference = statistics.mean(by_seed["cram+"][s] for s in both) - sgd
            mine = statistics.mean(by_seed[name][s] for s in both) - sgd
            row["gain_kept_at_90"] = mine / reference if reference else None
            row["gain_seeds"] = both
        row["meets_target"] = bool(
            row["gain_kept_at_90"] is not None and row["step_time_ratio"] is not None
            and row["step_time_ratio"] <= TARGET["time_ratio"]
            and row["gain_kept_at_90"] >= TARGET["gain_kept"])
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> str:
    fmt = lambda ms: f"{ms[0]:.1f} ± {ms[1]:.1f}"  # noqa: E731
    lines = [[r["setting"], len(r["seeds"]),
              "-" if r["step_time_ratio"] is None else f"{r['step_time_ratio']:.2f}",
              fmt(r["dense_top1"]), *(fmt(r["bnt_top1"][f"{s:g}"]) for s in SPARSITIES),
              "-" if r.get("gain_kept_at_90") is None else f"{100 * r['gain_kept_at_90']:.0f} %",
              "yes" if r["meets_target"] else "no"] for r in rows]
    return table(lines, ["setting", "seeds", "step / SGD", "dense top-1",
                         *(f"{100 * s:g} % + BNT" for s in SPARSITIES), "gain kept at 90 %",
                         "target"])


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r in rows:
        if r["step_time_ratio"] is None:
            continue
        mean, std = r["bnt_top1"]["0.9"]
        ax.errorbar(r["step_time_ratio"], mean, yerr=std, fmt="o", capsize=3)
        ax.annotate(f"{r['setting']} (n={len(r['seeds'])})", (r["step_time_ratio"], mean),
                    fontsize=8, xytext=(5, 3), textcoords="offset points")
    ax.axvline(TARGET["time_ratio"], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("training step time / SGD's (CPU, ResNet-20, batch 128)")
    ax.set_ylabel("top-1 (%) after one-shot 90 % global pruning + BNT")
    ax.set_title("Cheaper CrAM: accuracy at 90 % sparsity vs cost (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="bench_work/cheap_cram",
                        help="datasets, run folders and per-run results (kept for re-runs)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--rounds", type=int, default=12, help="timing rounds (0: no timing)")
    parser.add_argument("--no-train", action="store_true", help="only summarise finished runs")
    parser.add_argument("--timing-from", default="",
                        help="take the step times from this earlier result JSON (no timing run)")
    parser.add_argument("--threads", type=int, default=1, help="torch and loader threads per run")
    parser.add_argument("--plot", default="docs/cheap_cram_accuracy_vs_cost.png")
    args = parser.parse_args()
    if "sgd" not in args.settings or "cram+" not in args.settings:
        parser.error("--settings must include sgd and cram+ (the gain is measured between them)")
    THREADS["n"] = args.threads
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    with open(work / "bench.log", "a") as log:
        if not args.no_train:
            prepare_data(work, log)
        for seed in seeds:  # seed-major: an interrupted benchmark has every setting at least once
            for name in args.settings:
                done = (work / "runs" / slug(name) / f"seed{seed}" / "result.json").exists()
                if args.no_train and not done:
                    continue
                started = time.perf_counter()
                r = train_and_prune(work, name, seed, log)
                if not done:
                    print(f"{name} seed {seed}: dense {r['dense_top1']:.1f}, 90 % + BNT "
                          f"{r['bnt_top1']['0.9']:.1f} ({time.perf_counter() - started:.0f} s)",
                          flush=True)
    results = {}
    for name in args.settings:
        for seed in seeds:
            path = work / "runs" / slug(name) / f"seed{seed}" / "result.json"
            if path.exists():
                results.setdefault(name, []).append(json.loads(path.read_text()))
    timed = [n for n in args.settings if n in results]
    if args.timing_from:
        timing = json.loads(Path(args.timing_from).read_text())["timing"]
        args.rounds, times = timing["rounds"], timing["methods"]
    else:
        times = step_times(timed, args.rounds) if args.rounds else {}
    rows = summarise(results, times)
    saved = save_result("bench_cheap_cram_cpu", {
        "budget": FULL, "sparsities": SPARSITIES, "target": TARGET, "settings": SETTINGS,
        "timing": {"rounds": args.rounds, "steps_per_round": 4, "batch": FULL["batch_size"],
                   "model": "resnet20", "methods": times},
        "runs": results, "summary": rows})
    text = print_table(rows)
    print(text)
    plot(rows, REPOSITORY / args.plot)
    print(f"saved {saved}, plot {args.plot}")
    met = [r["setting"] for r in rows if r["meets_target"]]
    print("target met by: " + (", ".join(met) if met else "none"))


if __name__ == "__main__":
    main()
