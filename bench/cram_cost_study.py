"""CrAM's cost and benefit on real CIFAR-10, in one command (issue 27).

    python bench/cram_cost_study.py --archive cifar10-train-jpeg.tar.gz     (GPU: <= 8 minutes)
    python bench/cram_cost_study.py --smoke                                  (CPU, generated data)

The archive's 50,000 training JPEGs are converted once (write_datasets.py) into a fixed 45,000 /
5,000 split (the last 500 images of each class held out) plus a 1,000-image calibration set drawn
from the training side. Every setting (SGD, full CrAM+, the cheaper options) is trained for each
seed by train_cifar.py with resident data, seed-major and in a rotated order per seed so load
drift hits all settings alike, then pruned one-shot by eval_sparse.py on the hold-out (global
80 / 90 / 95 % and 2:4, each + BNT). Recipe: the reference's ResNet-20 high-sparsity CrAM+ (rho
0.15, sparsities 0.5 ... 0.95): the question is asked at 90 % and the table reaches 95 %, which the
Multi recipe (0.3 ... 0.9) never trains at. Writes <out>/cram_cost_study_<device>.json, .md (the
table) and .png (accuracy at 90 % + BNT against cost over SGD).

Every finished round (one seed, all settings) stays in <work>/runs and is skipped on a re-run.
`--budget-s` starts a new round only when the slowest round so far still fits; `--jobs` trains
that many runs of a round at once (separate processes).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's ffcv_cram
from common import REPOSITORY, environment  # noqa: E402
from cost_study_report import decision, plot, summarise, table_markdown  # noqa: E402
from ffcv_cram.atomic import write_text  # noqa: E402
from ffcv_cram.config import fail  # noqa: E402

RECIPE = "cifar_configs/rn20_cram_plus_high_sparsity.yaml"
SETTINGS = {  # name: trainer flags on top of the recipe, given the number of epochs
    "sgd": lambda e: ["--training.optimizer=sgd"],
    "cram+": lambda e: [],
    # the two cheapest of bench_cheap_cram.py (1.25x; reuse there hurt, so it is left out)
    "interval 4": lambda e: ["--cram.interval=4"],
    "fraction 0.25": lambda e: ["--cram.second_pass_fraction=0.25"],
    # issue 27: CrAM only in the second half (1.5x), and a rate ramp 1/4 -> 1 over the last
    # three quarters (1 + 3/4 * 5/8 = 1.47x)
    "last half": lambda e: [f"--cram.start_epoch={e / 2:g}"],
    "late ramp": lambda e: [f"--cram.start_epoch={e / 4:g}", "--cram.interval=4",
                                 "--cram.ramp=1"],
}
FULL = dict(holdout=500, subset=0, calibration=1000, epochs=15, batch_size=128, bnt_batches=100,
            bnt_batch_size=128, seeds="0,1,2")
SMOKE = dict(holdout=10, subset=0, calibration=40, epochs=1, batch_size=32, bnt_batches=2,
             bnt_batch_size=16, seeds="0,1", generated=dict(classes=4, per_class=50))
SMOKE_ARCHIVE = dict(SMOKE, holdout=20, subset=400, calibration=100)


CHILD_ENV = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}


def run(argv: list[str], log: Path) -> None:
    """Run a tool of this repository; a user mistake it reports (exit 2) is passed on as is."""
    with open(log, "a") as out:
        out.write("$ " + " ".join(argv) + "\n")
        out.flush()
        proc = subprocess.run(argv, cwd=REPOSITORY, stdout=out, stderr=subprocess.PIPE, text=True,
                              env=CHILD_ENV)
        out.write(proc.stderr)
    if proc.returncode == 2:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        fail(errors[-1][len("error: "):] if errors else f"{argv[1]} refused its arguments; see {log}")
    if proc.returncode != 0:
        sys.exit(f"{argv[1]} failed (exit {proc.returncode}); see {log}")


def class_tree(root: Path) -> Path | None:
    """The first folder under `root` (breadth first) whose sub-folders all hold files."""
    queue = [root]
    while queue:
        folder = queue.pop(0)
        subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if len(subs) > 1 and all(any(f.is_file() for f in s.iterdir()) for s in subs):
            return folder
        queue += subs
    return None


def extract(archive: Path, work: Path) -> Path:
    """The archive's class tree, extracted once into <work>/extracted (atomically: a rename)."""
    target = work / "extracted"
    if not target.is_dir():
        tmp = work / ".extracted.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with tarfile.open(archive) as tar:  # the "data" filter refuses links out of tmp
                tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        except (tarfile.TarError, OSError, EOFError) as err:
            shutil.rmtree(tmp, ignore_errors=True)
            reason = (str(err).splitlines() or [type(err).__name__])[0]  # tarfile's can be several
            fail(f"{archive}: cannot be read as a .tar.gz archive ({reason}); pass the CIFAR-10 "
                 "JPEG archive, or an extracted tree with --data-dir")
        tmp.rename(target)
    tree = class_tree(target)
    if tree is None:
        fail(f"{archive}: holds no class-folder tree (<class>/<image>); pass the CIFAR-10 JPEG "
             "archive, or an extracted tree with --data-dir")
    return tree


def source(args, work: Path, size: dict, log: Path) -> Path:
    if args.data_dir:
        tree = Path(args.data_dir).resolve()
        return class_tree(tree) or tree  # write_datasets.py explains what is wrong with it
    if args.archive:
        return extract(Path(args.archive).resolve(), work)
    generated = work / "generated"
    if not (generated / "train").is_dir():
        g = size["generated"]
        run([sys.executable, "-m", "ffcv_cram.data.synthetic", "--out", str(generated),
             "--classes", str(g["classes"]), "--train-per-class", str(g["per_class"]),
             "--val-per-class", "1", "--size", "32", "--workers", "1", "--overwrite"], log)
    return generated / "train"


def convert(tree: Path, work: Path, size: dict, log: Path) -> dict:
    """train / val (the hold-out) / calib .beton files, written once per (tree, split)."""
    stamp = {"tree": str(tree), **{k: size[k] for k in ("holdout", "subset", "calibration")}}
    files = {split: work / f"{split}.beton" for split in ("train", "val", "calib")}
    stamp_file = work / "data.json"
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp and all(
            f.is_file() for f in files.values()):
        return files
    common = ["--cfg.dataset=folder", f"--cfg.data_dir={tree}", "--cfg.overwrite=1",
              f"--cfg.holdout_per_class={size['holdout']}"]
    extra = {"train": [f"--cfg.subset={size['subset']}"] if size["subset"] else [],
             "val": [], "calib": [f"--cfg.calibration={size['calibration']}"]}
    for split, path in files.items():
        run([sys.executable, "write_datasets.py", *common, f"--cfg.write_path={path}",
             f"--cfg.split={'val' if split == 'val' else 'train'}", *extra[split]], log)
    write_text(str(stamp_file), json.dumps(stamp) + "\n")
    return files


def train_command(files: dict, folder: Path, name: str, seed: int, size: dict, device: str):
    epochs = size["epochs"]
    return [sys.executable, "train_cifar.py", "--config-file", RECIPE,
            f"--training.epochs={epochs}", f"--training.global_batch_size={size['batch_size']}", "--lr.scaling=linear",
            f"--lr.warmup_epochs={round(epochs * 5 / 200)}", "--lr.per_iteration=1",
            f"--training.device={device}", f"--training.amp={'bf16' if device == 'cuda' else 'none'}",
            f"--data.train_dataset={files['train']}", "--data.val_dataset=", "--data.resident=1",
            f"--training.seed={seed}", f"--cram.seed={seed}", f"--logging.folder={folder}",
            *SETTINGS[name](epochs)]


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.replace("+", "plus"))


def train_one(files, work, name, seed, size, device, log) -> dict:
    folder = work / "runs" / f"seed{seed}" / slug(name)
    shutil.rmtree(folder, ignore_errors=True)  # an unfinished earlier attempt: start it over
    start = time.perf_counter()
    run(train_command(files, folder, name, seed, size, device), log)
    epochs = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    return {"setting": name, "seed": seed, "folder": str(folder),
            "wall_s": time.perf_counter() - start,
            "train_s": sum(e["epoch_time_s"] for e in epochs),
            "full_steps": sum(sum(e["sparsity_draws"].values()) for e in epochs)}


def evaluate_round(runs: list[dict], files: dict, size: dict, device: str, out: Path, log: Path):
    """One eval_sparse.py over the round's checkpoints; adds each run's accuracies."""
    run([sys.executable, "eval_sparse.py",
         "--eval.checkpoint=" + ",".join(f"{r['folder']}/final_weights.pt" for r in runs),
         "--eval.labels=" + ",".join(slug(r["setting"]) for r in runs), "--model.arch=resnet20",
         "--data.style=cifar", f"--data.val_dataset={files['val']}",
         f"--data.calib_dataset={files['calib']}", "--prune.method=global,nm",
         "--prune.sparsities=0.8,0.9,0.95", "--prune.nm=2:4", f"--eval.device={device}",
         f"--bnt.batches={size['bnt_batches']}", f"--bnt.batch_size={size['bnt_batch_size']}",
         f"--out.dir={out}"], log)
    rows = json.loads((out / "results.json").read_text())
    for r in runs:
        mine = [row for row in rows if row["label"] == slug(r["setting"])]
        r["dense_top1"] = mine[0]["dense_top1"]
        r["bnt_top1"] = {(f"{row['sparsity']:g}" if row["method"] == "global" else row["pattern"]):
                         row["bnt_top1"] for row in mine}
        r["pruned_top1"] = {(f"{row['sparsity']:g}" if row["method"] == "global" else row["pattern"]):
                            row["pruned_top1"] for row in mine}


def run_round(files, work, names, seed, size, device, jobs, log) -> list[dict]:
    done = work / "runs" / f"seed{seed}" / "round.json"
    if done.is_file():
        return json.loads(done.read_text())
    order = names[seed % len(names):] + names[:seed % len(names)]  # rotated per seed
    with ThreadPoolExecutor(jobs) as pool:
        runs = list(pool.map(lambda n: train_one(files, work, n, seed, size, device, log), order))
    evaluate_round(runs, files, size, device, work / "runs" / f"seed{seed}" / "sweep", log)
    write_text(str(done), json.dumps(runs, indent=1) + "\n")
    return runs


def device_name(device: str) -> str:
    if device != "cuda":
        return "cpu"
    import torch
    name = torch.cuda.get_device_name(0).lower()
    return next((g for g in ("h200", "h100", "a100", "l40s", "l4") if g in name),
                name.replace(" ", "_"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source_args = parser.add_mutually_exclusive_group()
    source_args.add_argument("--archive", help="the CIFAR-10 JPEG archive (.tar.gz)")
    source_args.add_argument("--data-dir", help="or its extracted class-folder tree")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU check in minutes: a small subset (generated data without a source)")
    parser.add_argument("--work", default="build/cram_cost_study", help="datasets and run folders")
    parser.add_argument("--out", default="", help="report folder (default: bench/results; "
                        "with --smoke: the work folder)")
    parser.add_argument("--seeds", default="", help="comma-separated (default: 0,1,2; smoke 0,1)")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help="comma-separated, from: " + ", ".join(SETTINGS))
    parser.add_argument("--epochs", type=int, default=0, help="0: 15 (smoke: 1)")
    parser.add_argument("--budget-s", type=float, default=0,
                        help="start a round (a seed of every setting) only if it fits (0: no limit)")
    parser.add_argument("--jobs", type=int, default=0,
                        help="trainings at once (0: 3 on a GPU, 1 on the CPU, 2 with --smoke)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    return parser.parse_args(argv)


def check(args) -> tuple[list[str], list[int], dict]:
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        fail(f"--settings: unknown setting '{unknown[0]}'; choose from {', '.join(SETTINGS)}")
    if "sgd" not in names or "cram+" not in names:
        fail("--settings: must include sgd and cram+ (cost and gain are measured against them)")
    size = dict(SMOKE_ARCHIVE if args.archive or args.data_dir else SMOKE) if args.smoke else dict(FULL)
    if not args.smoke and not (args.archive or args.data_dir):
        fail("--archive or --data-dir is required (or --smoke for a CPU check on generated data)")
    if args.archive and not Path(args.archive).is_file():
        fail(f"{args.archive}: no such file; pass the CIFAR-10 JPEG archive (.tar.gz) to --archive")
    if args.data_dir and not Path(args.data_dir).is_dir():
        fail(f"{args.data_dir}: no such directory; pass the folder holding the class folders")
    try:
        seeds = [int(s) for s in (args.seeds or size["seeds"]).split(",")]
    except ValueError:
        fail(f"--seeds={args.seeds}: expected comma-separated integers, e.g. 0,1,2")
    for flag, value in (("--epochs", args.epochs), ("--jobs", args.jobs), ("--budget-s", args.budget_s)):
        if value < 0:
            fail(f"{flag}={value:g}: must be >= 0")
    size["epochs"] = args.epochs or size["epochs"]
    return names, seeds, size


def main(argv=None) -> int:
    args = parse_args(argv)
    names, seeds, size = check(args)
    import torch
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    # process start-up dominates the smoke's tiny runs: two at a time use both cores of a small CPU
    jobs = args.jobs or (3 if device == "cuda" else 2 if args.smoke else 1)
    if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:  # the cores shared by the jobs
        CHILD_ENV["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out).resolve() if args.out else (work if args.smoke else REPOSITORY / "bench" / "results")
    log = work / "study.log"
    started = time.perf_counter()
    files = convert(source(args, work, size, log), work, size, log)
    print(f"data: {files['train'].name}, {files['val'].name} (hold-out), {files['calib'].name} "
          f"in {work} ({time.perf_counter() - started:.0f} s)", flush=True)
    results, rounds, stopped = [], [], False
    for seed in seeds:
        elapsed = time.perf_counter() - started
        if args.budget_s and rounds and elapsed + max(rounds) > args.budget_s:
            stopped = True
            print(f"budget: seed {seed} would end after {elapsed + max(rounds):.0f} s of "
                  f"{args.budget_s:g}; stopping with {len(rounds)} seeds", flush=True)
            break
        t0 = time.perf_counter()
        runs = run_round(files, work, names, seed, size, device, jobs, log)
        rounds.append(time.perf_counter() - t0)
        results += runs
        print(f"seed {seed}: " + ", ".join(f"{r['setting']} {r['bnt_top1']['0.9']:.1f} % at 90 % "
                                           f"({r['train_s']:.0f} s)" for r in runs), flush=True)
    rows = summarise(results, names)
    verdict = decision(rows)
    tag = ("smoke_" if args.smoke else "") + device_name(device)
    payload = {"benchmark": "cram_cost_study", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
               "environment": environment(), "device": device, "jobs": jobs, "recipe": RECIPE,
               "budget": size, "settings": {n: SETTINGS[n](size["epochs"]) for n in names},
               "seeds": seeds, "stopped_by_budget": stopped,
               "wall_s": time.perf_counter() - started, "runs": results, "summary": rows,
               "decision": verdict}
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"cram_cost_study_{tag}"
    markdown = table_markdown(rows, verdict)
    write_text(f"{stem}.json", json.dumps(payload, indent=1) + "\n")
    write_text(f"{stem}.md", markdown)
    plot(rows, Path(f"{stem}.png"), device_name(device))
    print(markdown)
    print(f"results: {stem}.json, {stem}.md, {stem}.png ({payload['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
