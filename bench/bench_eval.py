"""Time of a one-shot pruning sweep (global, 5 sparsities, BNT) and where the time goes.

CPU: ResNet-20 on generated 32 px data (1,000 validation images, BNT with the reference's 100
batches of 128 from a 1,000-image calibration set). With CUDA also ResNet-50 on a generated
ImageNet-sized validation set (224 px, bf16). Loaders are warmed up (JIT) before timing; the
weights are random, which does not change the time of any phase.
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ffcv_cram.data.convert import convert
from ffcv_cram.data.loader_options import LoaderOptions
from ffcv_cram.data.pipelines import ImageLoader
from ffcv_cram.data.synthetic import generate
from ffcv_cram.models import get_model
from ffcv_cram.sweep.points import SweepSettings, sweep_checkpoint, targets

from common import save_result, table

SPARSITIES = [0.5, 0.7, 0.8, 0.9, 0.95]
PHASES = ["time_prune_s", "time_pruned_eval_s", "time_bnt_s", "time_bnt_eval_s"]


def run(name, arch, classes, size, style, device, work, val_per_class, calib):
    root = work / name
    generate(root / "shapes", classes=classes, train_per_class=calib // classes,
             val_per_class=val_per_class, size=size)
    for split in ("train", "val"):
        convert("folder", split, str(root / "shapes" / split), str(root / f"{split}.beton"),
                write_mode="jpg" if style == "imagenet" else "raw", progress=False)
    common = dict(resolution=224, options=LoaderOptions(style=style, device=device))
    val = ImageLoader(str(root / "val.beton"), train=False, batch_size=256, **common)
    cal = ImageLoader(str(root / "train.beton"), train=True, batch_size=128, drop_last=False, **common)
    for loader in (val, cal):  # JIT-compile the pipelines outside the timings
        for _ in loader:
            pass
    model = get_model(arch, classes).to(device, memory_format=torch.channels_last)
    settings = SweepSettings(bnt_batches=100, amp_dtype=torch.bfloat16 if device.type == "cuda" else None,
                             progress=False)
    start = time.perf_counter()
    rows = sweep_checkpoint(name, "random init", model, model.state_dict(), val, cal,
                            targets(["global"], SPARSITIES, []), settings, device)
    total = time.perf_counter() - start
    per_phase = {p: statistics.mean(r[p] for r in rows) for p in PHASES}
    return {"name": name, "arch": arch, "device": str(device), "val_images": val.num_samples,
            "total_s": total, "dense_eval_s": rows[0]["time_dense_eval_s"],
            "seconds_per_point": (total - rows[0]["time_dense_eval_s"]) / len(rows),
            "mean_phase_s": per_phase}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    cases = [run("resnet20-cpu", "resnet20", 10, 32, "cifar", torch.device("cpu"), work, 100, 1000)]
    if torch.cuda.is_available():
        cases.append(run("resnet50-cuda", "resnet50", 100, 256, "imagenet", torch.device("cuda"),
                         work, 50, 1000))
    rows = [[c["name"], c["val_images"], f"{c['total_s']:.1f}", f"{c['seconds_per_point']:.2f}",
             *[f"{c['mean_phase_s'][p]:.2f}" for p in PHASES]] for c in cases]
    path = save_result("bench_eval_" + ("cuda" if torch.cuda.is_available() else "cpu"),
                       {"sparsities": SPARSITIES, "bnt_batches": 100, "bnt_batch_size": 128,
                        "cases": cases})
    print(table(rows, ["case", "val images", "sweep s", "s / point", "prune", "eval pruned",
                       "BNT (100 x 128)", "eval after BNT"]))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
