"""`make demo`: the whole pipeline on a generated dataset, with the commands a user would type.

generate shapes -> write_datasets.py (train, val, calibration) -> train_cifar.py twice (CrAM+
Multi and SGD, same epochs; rho 0.05, since the reference's 0.15-0.2 are tuned for 200
epochs and slow a 10-epoch run badly) -> eval_sparse.py on both (global 50-95 % and 2:4, with BNT) -> the
comparison table and the plot. Every command is printed before it runs.

    python -m ffcv_cram.demo --out demo_out            (about 10 minutes on a 2-core CPU)
    python -m ffcv_cram.demo --out demo_out --quick    (a reduced size, for the test suite)
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL = dict(classes=10, train_per_class=300, val_per_class=100, calibration=500, epochs=10,
            batch_size=128, bnt_batches=20)
QUICK = dict(classes=4, train_per_class=40, val_per_class=10, calibration=40, epochs=2,
             batch_size=32, bnt_batches=2)
SPARSITIES = "0.5,0.7,0.8,0.9,0.95"


def _run(argv: list[str], log) -> None:
    shown = " ".join(shlex.quote(a) for a in argv).replace(sys.executable, "python")
    print(f"\n$ {shown}", flush=True)
    log.write(f"$ {shown}\n")
    log.flush()
    # bytes, not text: the log keeps the output exactly as written (text mode would turn a
    # progress bar's carriage returns into line ends). Into a pipe, our progress comes as plain
    # lines (ffcv_cram.progress), so there are no bar frames to filter out.
    proc = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.decode(errors="replace")
    log.write(output)
    kept = [line for line in output.split("\n") if line.strip()]
    print("\n".join(kept[-25:]), flush=True)
    if proc.returncode != 0:
        sys.exit(f"demo step failed (exit {proc.returncode}); full output in {log.name}")


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="output folder (replaced)")
    parser.add_argument("--quick", action="store_true", help="reduced size (seconds, for tests)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    py = sys.executable
    start = time.perf_counter()
    with open(out / "demo.log", "w", newline="") as log:
        for argv in data_commands(py, out, size):
            _run(argv, log)
        for name, optimizer in [("cram", "cram"), ("sgd", "sgd")]:
            _run(train_command(py, out, size, args.device, out / "runs" / name,
                               f"--training.optimizer={optimizer}"), log)
        _run([py, "eval_sparse.py",
              f"--eval.checkpoint={out / 'runs/cram/final_weights.pt'},{out / 'runs/sgd/final_weights.pt'}",
              "--eval.labels=CrAM+,SGD", "--model.arch=resnet20", "--data.style=cifar",
              f"--data.val_dataset={out / 'val.beton'}", f"--data.calib_dataset={out / 'calib.beton'}",
              "--prune.method=global,nm", f"--prune.sparsities={SPARSITIES}", "--prune.nm=2:4",
              f"--bnt.batches={size['bnt_batches']}", f"--eval.device={args.device}",
              f"--out.dir={out / 'sweep'}"], log)
    rows = json.loads((out / "sweep" / "results.json").read_text())
    print(summary(rows))
    print(f"\nplot: {out / 'sweep' / 'accuracy_vs_sparsity.png'}")
    print(f"everything (datasets, runs, logs, results): {out}   ({time.perf_counter() - start:.0f} s)")
    return 0


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
