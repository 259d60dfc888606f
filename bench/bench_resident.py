"""ResNet-20 SGD training throughput: resident data (`--data.resident=1`) vs the FFCV loader path.

Same .beton (a CIFAR-style file: `--beton`, or generated noise images), same model, batch and
AMP policy (bf16 on a GPU, fp32 on the CPU). Each path builds its loader once (the FFCV path's
JIT compile and the resident path's one read are reported as start-up), trains one untimed
warm-up epoch, then every round times one epoch of each, interleaved, so a slow spell of a shared
machine hits both alike; images/s and the ratio are medians over the rounds. Also timed: the
loaders alone (an epoch of batches, no training).

    python bench/bench_resident.py --beton build/cram_cost_study/train.beton --rounds 3   (a GPU)
    python bench/bench_resident.py --smoke                                                (CPU)
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's ffcv_cram
from common import save_result, table  # noqa: E402
from ffcv_cram.data.encoding import Encoding  # noqa: E402
from ffcv_cram.data.loader_options import LoaderOptions  # noqa: E402
from ffcv_cram.data.pipelines import ImageLoader  # noqa: E402
from ffcv_cram.data.resident import ResidentLoader  # noqa: E402
from ffcv_cram.data.writer import write_beton  # noqa: E402
from ffcv_cram.models import get_model  # noqa: E402
from ffcv_cram.train.optimizer_options import OptimizerOptions  # noqa: E402
from ffcv_cram.train.step import TrainStep, make_optimizer  # noqa: E402


class NoiseImages:
    """Seeded 32 x 32 noise images in 10 classes (throughput does not depend on content)."""

    def __init__(self, n: int):
        self.labels = np.arange(n) % 10

    def __len__(self):
        return len(self.labels)

    def load(self, i):
        return np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)

    def describe(self, i):
        return f"sample {i}"


def loaders(path: str, batch: int, device: torch.device, dtype: torch.dtype) -> dict:
    built = {}
    start = time.perf_counter()
    built["resident"] = (ResidentLoader(path, train=True, batch_size=batch, device=device,
                                        dtype=dtype), time.perf_counter() - start)
    start = time.perf_counter()
    ffcv = ImageLoader(path, train=True, batch_size=batch,
                       options=LoaderOptions(style="cifar", device=device, dtype=dtype))
    next(iter(ffcv))  # the JIT compile happens at the first iteration
    built["FFCV loader"] = (ffcv, time.perf_counter() - start)
    return built


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def epoch_timer(loader, step, device):
    def epoch():
        images = 0
        for x, y in loader:
            if step is not None:
                step(x, y)
            images += len(y)
        sync(device)
        return images
    return epoch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beton", default="", help="a CIFAR-style .beton (default: generated)")
    parser.add_argument("--images", type=int, default=10000, help="generated images")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="256 images, 1 round (CPU check)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.rounds = 256, 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with tempfile.TemporaryDirectory() as tmp:
        path = args.beton
        if not path:
            path = str(Path(tmp) / "noise.beton")
            write_beton(path, NoiseImages(args.images), range(args.images), Encoding(),
                        num_workers=0, progress=False)
        built = loaders(path, args.batch, device, dtype)
        torch.manual_seed(0)
        base = get_model("resnet20", 10).to(device).to(memory_format=torch.channels_last)
        results = {}
        for mode in ("train", "loader only"):
            timers = {}
            for name, (loader, _) in built.items():
                step = None
                if mode == "train":
                    model = copy.deepcopy(base)
                    opt = make_optimizer(model.parameters(), OptimizerOptions(
                        method="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4))
                    step = TrainStep(model, opt, "sgd", "bf16" if dtype == torch.bfloat16 else
                                     "none", device=device)
                timers[name] = epoch_timer(loader, step, device)
                timers[name]()  # warm-up epoch
            times = {name: [] for name in timers}
            for _ in range(args.rounds):
                for name, timer in timers.items():
                    start = time.perf_counter()
                    images = timer()
                    times[name].append(images / (time.perf_counter() - start))
            results[mode] = {name: {"images_per_s": statistics.median(v), "rounds": v}
                             for name, v in times.items()}
    rows = [[mode, name, f"{r['images_per_s']:,.0f}",
             f"{r['images_per_s'] / results[mode]['FFCV loader']['images_per_s']:.2f}",
             f"{built[name][1]:.1f}"]
            for mode, by in results.items() for name, r in by.items()]
    print(table(rows, ["what", "data path", "images/s", "/ FFCV loader", "start-up s"]))
    saved = save_result(f"bench_resident_{device.type}", {
        "model": "resnet20", "batch": args.batch, "dtype": str(dtype), "beton": args.beton or
        f"generated ({args.images} images)", "rounds": args.rounds, "results": results,
        "startup_s": {name: s for name, (_, s) in built.items()}})
    print(f"saved {saved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
