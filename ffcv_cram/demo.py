"""`make demo`: the whole pipeline on a generated dataset, with the commands a user would type.

generate shapes -> write_datasets.py (train, val, calibration) -> train_cifar.py twice (CrAM+
Multi and SGD, same epochs; rho 0.05, since the reference's 0.15-0.2 are tuned for 200
epochs and slow a 10-epoch run badly) -> eval_sparse.py on both (global 50-95 % and 2:4, with BNT) -> the
comparison table and the plot. Every command is printed before it runs, its output streams to the
screen and demo.log as it comes; running the demo again into the same --out resumes it.

    python -m ffcv_cram.demo --out demo_out            (about 3 minutes on an idle 2-core CPU)
    python -m ffcv_cram.demo --out demo_out --quick    (a reduced size, for the test suite: 2-3 min)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .atomic import AtomicWriteError
from .config import fail
from .demo_folder import DemoFolder, FolderRefused
from .demo_steps import Interrupted, StepFailed, run_step
from .interrupts import treat_sigterm_as_ctrl_c

ROOT = Path(__file__).resolve().parents[1]
FULL = dict(classes=10, train_per_class=300, val_per_class=100, calibration=500, epochs=10,
            batch_size=128, bnt_batches=20)
QUICK = dict(classes=4, train_per_class=40, val_per_class=10, calibration=40, epochs=2,
             batch_size=32, bnt_batches=2)
SPARSITIES = "0.5,0.7,0.8,0.9,0.95"
DATA_OUTPUTS = ["shapes", "train.beton", "val.beton", "calib.beton"]  # of data_commands, in order
OVERWRITE = {"shapes": "--overwrite"}  # the flag that replaces an output (write_datasets.py's: default)


def data_commands(py: str, out: Path, size: dict) -> list[list[str]]:
    """Generate the shapes and write train.beton, val.beton and calib.beton into `out`."""
    commands = [[py, "-m", "ffcv_cram.data.synthetic", "--out", str(out / "shapes"),
                 "--classes", str(size["classes"]), "--train-per-class", str(size["train_per_class"]),
                 "--val-per-class", str(size["val_per_class"]), "--size", "32"]]
    for split, extra in [("train", []), ("val", []),
                         ("calib", [f"--cfg.calibration={size['calibration']}"])]:
        folder = "val" if split == "val" else "train"
        commands.append([py, "write_datasets.py", "--cfg.dataset=folder",
                         f"--cfg.split={'val' if split == 'val' else 'train'}",
                         f"--cfg.data_dir={out / 'shapes' / folder}",
                         f"--cfg.write_path={out / f'{split}.beton'}", *extra])
    return commands


def train_command(py: str, out: Path, size: dict, device: str, folder: Path, *extra) -> list[str]:
    """The demo's training: ResNet-20, CrAM+ high-sparsity recipe at rho 0.05, `size`'s budget
    (`extra` flags override, e.g. --training.optimizer=sgd)."""
    return [py, "train_cifar.py", "--config-file", "cifar_configs/rn20_cram_plus_high_sparsity.yaml",
            f"--training.epochs={size['epochs']}", "--cram.rho=0.05",
            f"--training.global_batch_size={size['batch_size']}", "--lr.scaling=none",
            "--lr.warmup_epochs=1",
            "--lr.per_iteration=1", f"--training.device={device}",
            f"--data.train_dataset={out / 'train.beton'}",
            f"--data.val_dataset={out / 'val.beton'}", "--validation.every=0",
            f"--logging.folder={folder}", *extra]


def _data_step(folder: DemoFolder, output: str, argv: list[str], log) -> None:
    """Run one data command unless an earlier run finished it. An output without the record
    (the run stopped between writing it and recording it) is replaced: the writers refuse to
    overwrite unless told."""
    path = folder.path / output
    if folder.done(output):
        line = f"skip: {path} (written by an earlier run of the demo)"
        print(f"\n{line}", flush=True)
        log.write(f"{line}\n".encode())
        return
    if path.exists():
        argv = argv + [OVERWRITE.get(output, "--cfg.overwrite=1")]
    run_step(output, argv, ROOT, log)
    folder.finish(output)


def _steps(folder: DemoFolder, size: dict, device: str, log) -> None:
    out, py = folder.path, sys.executable
    for output, argv in zip(DATA_OUTPUTS, data_commands(py, out, size)):
        _data_step(folder, output, argv, log)
    # the trainers resume an unfinished run and say "nothing to do" for a finished one
    for name, optimizer in [("cram", "cram"), ("sgd", "sgd")]:
        run_step(f"train_cifar.py (runs/{name})",
                 train_command(py, out, size, device, out / "runs" / name,
                               f"--training.optimizer={optimizer}"), ROOT, log)
    run_step("eval_sparse.py", [
        py, "eval_sparse.py",
        f"--eval.checkpoint={out / 'runs/cram/final_weights.pt'},{out / 'runs/sgd/final_weights.pt'}",
        "--eval.labels=CrAM+,SGD", "--model.arch=resnet20", "--data.style=cifar",
        f"--data.val_dataset={out / 'val.beton'}", f"--data.calib_dataset={out / 'calib.beton'}",
        "--prune.method=global,nm", f"--prune.sparsities={SPARSITIES}", "--prune.nm=2:4",
        f"--bnt.batches={size['bnt_batches']}", f"--eval.device={device}",
        f"--out.dir={out / 'sweep'}"], ROOT, log)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out",
                        help="output folder: new, empty, or an earlier demo's (resumed)")
    parser.add_argument("--quick", action="store_true", help="reduced size (seconds, for tests)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args(argv)
    treat_sigterm_as_ctrl_c()
    start = time.perf_counter()
    try:
        out = _demo(Path(args.out).resolve(), args.quick, args.device)
    except (FolderRefused, AtomicWriteError) as err:
        fail(str(err))
    except StepFailed as err:
        fail(f"{err.step} failed (exit {err.code}); its output is above and in "
             f"{Path(args.out).resolve() / 'demo.log'}", 1)
    except (Interrupted, KeyboardInterrupt) as err:
        during = f" during {err.step}" if isinstance(err, Interrupted) else ""
        fail(f"interrupted{during}; finished steps are kept: run the same command again to "
             "resume", 130)
    print(f"everything (datasets, runs, logs, results): {out}   ({time.perf_counter() - start:.0f} s)")
    return 0


def _demo(path: Path, quick: bool, device: str) -> Path:
    """Every step into `path`, then the summary."""
    folder = DemoFolder.open(path, "quick" if quick else "full")
    with open(path / "demo.log", "ab") as log:  # appended: a resumed run keeps the earlier lines
        log.write(f"=== demo started {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        _steps(folder, QUICK if quick else FULL, device, log)
    rows = json.loads((path / "sweep" / "results.json").read_text())
    print(summary(rows))
    print(f"\nplot: {path / 'sweep' / 'accuracy_vs_sparsity.png'}")
    return path


def summary(rows: list[dict]) -> str:
    """CrAM+ vs SGD side by side: top-1 after one-shot pruning + BNT, per target."""
    by = {(r["label"], r["pattern"] or f"{100 * r['sparsity']:g}%"): r for r in rows}
    labels = list(dict.fromkeys(r["label"] for r in rows))
    targets = list(dict.fromkeys(k for _, k in by))
    header = ["target"] + [f"{label} pruned / +BNT" for label in labels]
    lines = [["dense"] + [f"{by[(label, targets[0])]['dense_top1']:.1f}" for label in labels]]
    for t in targets:
        lines.append([t] + [f"{by[(label, t)]['pruned_top1']:.1f} / {by[(label, t)]['bnt_top1']:.1f}"
                            for label in labels])
    widths = [max(len(row[i]) for row in [header] + lines) for i in range(len(header))]
    fmt = lambda row: "  ".join(c.rjust(w) for c, w in zip(row, widths))  # noqa: E731
    return "\n".join(["\nTop-1 accuracy (%) on the generated validation set:", fmt(header),
                      fmt(["-" * w for w in widths])] + [fmt(row) for row in lines])


if __name__ == "__main__":
    sys.exit(main())
