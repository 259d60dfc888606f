"""bench_decode.py's loaders: the variants built (each timed per batch), and what is measured
through them: alone, against the CPU path, feeding a training step, under the profiler."""
import contextlib
import os
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ffcv_cram.data import jpeg_decoders
from ffcv_cram.data.encoding import Encoding
from ffcv_cram.data.loader_options import DecodeVariants, GpuDecodeOptions, LoaderOptions
from ffcv_cram.data.pipelines import IMAGENET_STD, ImageLoader
from ffcv_cram.data.writer import write_beton
from ffcv_cram.models import get_model
from ffcv_cram.train.optimizer_options import OptimizerOptions
from ffcv_cram.train.step import TrainStep, make_optimizer

from decode_report import elapsed, say
from natural_images import NaturalImages


def variants(args, device, full: dict) -> dict:
    # on the CPU (dry run) the kernel's variants take the reference crops: Triton's interpreter
    # needs seconds per image of a 500 px photograph; tests/test_jpeg_decoders.py runs the kernel
    on_cuda = device.type == "cuda"
    kernel = None if on_cuda else False
    out = {
        "reference": GpuDecodeOptions("torchvision", 1, DecodeVariants(
            crop_kernel=False, region_decode=False, sync_handover=True)),
        "quick": GpuDecodeOptions("torchvision", args.prefetch, DecodeVariants(
            crop_kernel=kernel, region_decode=False)),
        "full": GpuDecodeOptions("nvimgcodec" if on_cuda else "auto", args.prefetch, DecodeVariants(
            crop_kernel=kernel, region_decode=full["regions"] if on_cuda else True)),
    }
    out = {name: dict(gpu=gpu) for name, gpu in out.items()}
    if on_cuda:
        out["full"]["nvimgcodec_backends"] = full["backends"]
    return out


def write_dataset(folder: Path, images: int, workers: int) -> str:
    path = folder / f"natural_{images}_jpg.beton"
    if not path.exists():
        write_beton(str(path), NaturalImages(images), range(images),
                    Encoding(write_mode="jpg", jpeg_quality=90, max_resolution=500),
                    num_workers=workers)
    return str(path)


class Timed:
    """A loader's DeviceBatches, timed: host ms per call and (CUDA) events around its work on
    the producer's stream."""

    def __init__(self, inner, device):
        self.inner, self.device = inner, device
        self.host_ms: list[float] = []
        self.events: list = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, *args):
        start = end = None
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(torch.cuda.current_stream(self.device))
        begun = time.perf_counter()
        out = self.inner(*args)
        self.host_ms.append(1000 * (time.perf_counter() - begun))
        if end is not None:
            end.record(torch.cuda.current_stream(self.device))
            self.events.append((start, end))
        return out

    def reset(self):
        self.host_ms, self.events = [], []

    def gpu_ms(self) -> list[float]:  # after a synchronize
        return [s.elapsed_time(e) for s, e in self.events]


@contextlib.contextmanager
def environment_variable(name: str, value: str | None):
    """`name` set to `value` (None: left as it is) while the block runs."""
    if value is None:
        yield
        return
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def build(path, options, args, device, batch_size=None, indices=None, dtype=None):
    options = dict(options)
    backends = options.pop("nvimgcodec_backends", None)  # read when the loader builds its decoder
    loading = LoaderOptions(num_workers=args.workers, decode="gpu", device=device,
                            dtype=dtype or args.dtype, **options)
    with environment_variable(jpeg_decoders.NVIMGCODEC_BACKENDS_ENV, backends):
        loader = ImageLoader(path, train=True, batch_size=batch_size or args.batch_size,
                             resolution=args.resolution, seed=0, indices=indices, options=loading)
    loader.device_batches = Timed(loader.device_batches, loader.device)
    return loader


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def percentiles(values, qs=(50, 99)) -> dict:
    if not values:
        return {f"p{q}": None for q in qs}
    return {f"p{q}": float(np.percentile(values, q)) for q in qs}


def count_syncs(device, fn) -> int | None:
    """Host synchronisations torch reports while fn() runs (all threads), or None on the CPU."""
    if device.type != "cuda":
        fn()
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def take(iterator, count: int) -> None:
    for _ in range(count):
        next(iterator)


def loader_alone(loader, args, device) -> dict:
    batches = loader.epochs()
    take(batches, args.warmup)
    sync(device)
    loader.device_batches.reset()
    fallbacks = loader.decode_fallbacks
    begun = time.perf_counter()
    take(batches, args.loader_steps)
    sync(device)
    seconds = time.perf_counter() - begun
    batches.close()
    sync(device)  # the batches prepared ahead have finished too: all their events can be read
    timed = loader.device_batches
    out = {"images_per_s": args.loader_steps * args.batch_size / seconds,
           "host_ms_per_batch": percentiles(timed.host_ms),
           "stream_busy_ms_per_batch": percentiles(timed.gpu_ms()),
           "cpu_fallbacks_per_batch": (loader.decode_fallbacks - fallbacks) / max(len(timed.host_ms), 1)}

    def few():
        counted = loader.epochs()
        take(counted, args.sync_steps)
        sync(device)
        counted.close()  # the producer has stopped before the count ends
    syncs = count_syncs(device, few)
    out["syncs_per_batch"] = None if syncs is None else syncs / args.sync_steps
    return out


def check_against_cpu(path, options, args, device, cpu_run: list) -> dict:
    """The variant on `device` vs the whole path on CPU tensors (`cpu_run`, computed once),
    same crops and flips; float32 outputs."""
    def batches(where, opts):
        loader = build(path, opts, args, where, batch_size=args.check_batch,
                       indices=np.arange(2 * args.check_batch), dtype=torch.float32)
        return [(x.float().cpu(), y.cpu()) for x, y in loader]
    if not cpu_run:
        cpu_run.extend(batches(torch.device("cpu"), {}))
    runs = [batches(device, options), cpu_run]
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    diffs = torch.cat([((a - b) * std).abs().flatten() for (a, _), (b, _) in zip(*runs)])
    same_labels = all(torch.equal(ya, yb) for (_, ya), (_, yb) in zip(*runs))
    out = {"mean_abs_diff": diffs.mean().item(), "p99_abs_diff": diffs.quantile(0.99).item(),
           "same_labels": same_labels}
    out["ok"] = same_labels and out["mean_abs_diff"] < 2.0 and out["p99_abs_diff"] < 12.0
    return out


def training(method, feeders: dict, args, device, share_end: float, hard_end: float) -> dict:
    """Ceiling vs fed by each loader of `feeders`, interleaved: up to --repeats rounds, each one
    pass of the ceiling and one per feeder, the order reversed every other round. A round that
    would end after `share_end` (elapsed s; the first round: after `hard_end`) is skipped."""
    steps = args.train_steps if method == "sgd" else args.cram_steps
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    model = get_model(args.model, 1000).to(device, memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), OptimizerOptions(
        method=method, lr=0.1, momentum=0.9, weight_decay=5e-5, sparsities=(0.5, 0.7, 0.9)))
    step = TrainStep(model, optimizer, method, args.amp, device=device)
    x = torch.randn(args.batch_size, 3, args.resolution, args.resolution, device=device,
                    dtype=args.dtype).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)
    iterators = {name: loader.epochs() for name, loader in feeders.items()}
    waits: dict = {name: [] for name in feeders}
    settle = args.prefetch + 2  # untimed: what the loader prepared while other passes ran

    def ceiling(count, record=True):
        for _ in range(count):
            step(x, y)

    def feeder(name):
        def fed(count, record=True):
            for _ in range(count):
                begun = time.perf_counter()
                xb, yb = next(iterators[name])
                if record:
                    waits[name].append(1000 * (time.perf_counter() - begun))
                step(xb, yb)
        return fed
    passes = {"ceiling": ceiling, **{name: feeder(name) for name in feeders}}

    def timed(name, count, record=True):
        if record and name != "ceiling":
            passes[name](settle, record=False)
        sync(device)
        begun = time.perf_counter()
        passes[name](count, record)
        sync(device)
        return count * args.batch_size / (time.perf_counter() - begun)

    first = max(1, args.warmup // 2)  # cuDNN's autotuning, each loader's start: not timed
    estimate = 0.0
    for name in passes:
        timed(name, first, record=False)
        estimate += (steps + settle) * args.batch_size / timed(name, max(1, args.warmup - first), False)
    rates: dict = {name: [] for name in passes}
    skipped = 0
    for round_ in range(args.repeats):
        if elapsed() + estimate > (hard_end if round_ == 0 else share_end):
            skipped = args.repeats - round_
            say(f"  {method}: {skipped} round(s) skipped (would end after the time allowed)")
            break
        begun = time.perf_counter()
        order = list(passes) if round_ % 2 == 0 else list(passes)[::-1]
        for name in order:
            rates[name].append(timed(name, steps))
        estimate = time.perf_counter() - begun
    for batches in iterators.values():
        batches.close()
    of_ceiling = {name: [f / c for f, c in zip(rates[name], rates["ceiling"])] for name in feeders}
    return {"steps_per_pass": steps, "rounds": len(rates["ceiling"]), "rounds_skipped": skipped,
            "images_per_s": rates,
            "of_ceiling": {n: statistics.median(r) if r else None for n, r in of_ceiling.items()},
            "of_ceiling_rounds": of_ceiling,
            "wait_ms_per_step": {name: percentiles(w) for name, w in waits.items()},
            "ceiling_step_ms": 1000 * args.batch_size / statistics.median(rates["ceiling"])
            if rates["ceiling"] else None}


def loader_kernels(loader, args, device) -> dict:
    """What one batch of `loader` runs on the GPU's SMs: torch.profiler (CUDA activity) over
    --profile-batches calls of its per-batch work, alone, in this thread on a side stream (as the
    producer runs it). Kernels: summed device time (decoders' kernels, the crop kernel, casts;
    kernels that overlap on several streams count in full); copies (memcpy/memset, copy engines)
    apart; the JPEG engine's work is no kernel."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == "cuda"
    stream = torch.cuda.Stream(device) if cuda else None
    batches = loader._device_batches(0, 0)
    try:
        with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
            take(batches, 2)
            sync(device)
            with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
                take(batches, args.profile_batches)
                sync(device)
    finally:
        batches.close()
    kernels, copies_us, count = {}, 0.0, 0
    for event in prof.events():
        if event.device_type != DeviceType.CUDA:
            continue
        us = event.time_range.elapsed_us()
        if event.name.startswith(("Memcpy", "Memset")):
            copies_us += us
        else:
            kernels[event.name] = kernels.get(event.name, 0.0) + us
            count += 1
    n = args.profile_batches
    if cuda and not kernels:  # every batch runs at least the crop or the cast: no trace came
        raise RuntimeError("the profiler recorded no kernels (CUPTI activity tracing unavailable?)")
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:4]
    return {"batches": n, "kernel_ms_per_batch": sum(kernels.values()) / 1000 / n,
            "kernels_per_batch": count / n, "copy_ms_per_batch": copies_us / 1000 / n,
            "top_kernels_ms_per_batch": {name[:90]: us / 1000 / n for name, us in top}}
