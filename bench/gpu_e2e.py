"""gpu_check section 6: train_imagenet.py end to end on a generated .beton, decode on the GPU.

ResNet-50, CrAM+ (fused step), bf16, channels_last, batch 256 per GPU, progressive resizing
160 -> 192 px, a validation pass at the end, on generated photographs (bench/natural_images.py,
about 500 x 375, JPEG q90): the trainer exactly as a user runs it, in a subprocess. Reports
images/s per epoch from the run's log.jsonl. The run is given --seconds; if it has not finished
by then it is stopped and the epochs done so far are reported.
Saves gpu_e2e.json (bench/common.py save_result).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPOSITORY, save_result, table
from bench_decode import write_dataset


def command(train: str, val: str, folder: str, args) -> list[str]:
    device, decode, arch, amp = (("cpu", "cpu", "resnet20", "none") if args.dry_run
                                 else ("cuda", "gpu", "resnet50", "bf16"))
    return [sys.executable, str(REPOSITORY / "train_imagenet.py"),
            f"--data.train_dataset={train}", f"--data.val_dataset={val}", f"--data.decode={decode}",
            f"--data.num_workers={args.workers}", f"--model.arch={arch}",
            "--model.num_classes=1000", "--training.optimizer=cram", f"--training.amp={amp}",
            f"--training.global_batch_size={args.batch_size}", f"--lr.batch_size={args.batch_size}",
            f"--training.epochs={args.epochs}",
            f"--training.device={device}", "--lr.lr=0.1", "--lr.schedule=cosine",
            "--lr.warmup_epochs=0",
            f"--resolution.min_res={args.min_res}", f"--resolution.max_res={args.max_res}",
            "--resolution.end_ramp=" + str(max(args.epochs - 2, 1)),
            f"--resolution.val_res={args.max_res}", f"--validation.batch_size={args.batch_size}",
            f"--logging.folder={folder}"]


def epochs_logged(folder: str) -> list[dict]:
    path = Path(folder) / "log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120, help="stop the run after this long")
    parser.add_argument("--images", type=int, default=5120)
    parser.add_argument("--val-images", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--min-res", type=int, default=160)
    parser.add_argument("--max-res", type=int, default=192)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--data-dir", default="", help="where the .beton files are (or go)")
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU needed: a tiny dataset, one epoch on the CPU (CPU decode)")
    args = parser.parse_args()
    if args.dry_run:
        args.images, args.val_images, args.epochs, args.batch_size = 32, 16, 1, 8
        args.min_res = args.max_res = 32
    data = Path(args.data_dir or tempfile.mkdtemp(prefix="gpu_e2e_"))
    data.mkdir(parents=True, exist_ok=True)
    train = write_dataset(data, args.images, args.workers)
    val = write_dataset(data, args.val_images, args.workers)
    with tempfile.TemporaryDirectory(prefix="gpu_e2e_run_") as folder:
        cmd = command(train, val, folder, args)
        print("running: " + " ".join(Path(c).name if c.startswith("/") else c for c in cmd),
              flush=True)
        start = time.perf_counter()
        try:
            returncode = subprocess.run(cmd, timeout=args.seconds, env={
                **os.environ, "WANDB_MODE": "disabled"}).returncode
            status = "finished" if returncode == 0 else f"failed (exit status {returncode})"
        except subprocess.TimeoutExpired:
            returncode, status = None, f"stopped after {args.seconds:.0f} s"
        seconds = time.perf_counter() - start
        epochs = epochs_logged(folder)
        finished = (Path(folder) / "final_weights.pt").exists()
    keys = ("epoch", "resolution", "images_per_s", "epoch_time_s", "train_loss", "val_top1",
            "skipped_steps", "sparsity_draws", "decode_fallbacks", "decode_failures")
    result = {"status": status, "seconds": seconds, "final_weights_written": finished,
              "settings": vars(args), "epochs": [{k: e.get(k) for k in keys} for e in epochs]}
    print(table([[e["epoch"], e["resolution"], f"{e['images_per_s']:,.0f}",
                  f"{e['epoch_time_s']:.1f}", f"{e['train_loss']:.3f}"] for e in epochs],
                ["epoch", "res", "images/s", "seconds", "loss"]))
    print(f"train_imagenet.py {status} in {seconds:.0f} s; {len(epochs)} epochs logged")
    if args.dry_run:
        print("dry run: nothing saved")
    else:
        print(f"saved {save_result('gpu_e2e', result)}")
    return 0 if (returncode == 0 or returncode is None) and epochs else 1


if __name__ == "__main__":
    sys.exit(main())
