"""bench_decode.py's decoder microbenchmark (2.): each JPEG decoder case alone on stored batches,
its pixels against the first whole-image case's, and the 'full' loader's nvImageCodec choice."""
import statistics
import time

import numpy as np
import torch

from ffcv_cram.data import jpeg_decoders
from ffcv_cram.data.encoded_bytes import HEADER_BYTES, JPG, EncodedBatch
from ffcv_cram.data.loader_options import LoaderOptions
from ffcv_cram.data.pipelines import ImageLoader
from ffcv_cram.data.seeded_crops import random_crops_and_flips

from decode_loaders import sync

# nvImageCodec backend lists of the decoder microbenchmark (jpeg_decoders.parse_backends' form)
NV_BACKEND_LISTS = {"shipped": jpeg_decoders.NVIMGCODEC_BACKENDS, "hw": "hw_gpu_only",
                    "gpu": "gpu_only", "hybrid": "hybrid_cpu_gpu",
                    "hw 0.75 + hybrid": "hw_gpu_only:0.75,hybrid_cpu_gpu"}
PIXELS_OK = {"mean_abs_diff": 2.0, "p99_abs_diff": 12.0}  # the decoders' usual disagreement, 0-255


def stored_batches(path, args, count: int) -> list:
    """`count` batches of (streams, sizes, boxes) read from the .beton (copies)."""
    loader = ImageLoader(path, train=True, batch_size=args.batch_size, resolution=args.resolution,
                         seed=0, options=LoaderOptions(num_workers=args.workers, decode="gpu"))
    out = []
    epoch = loader._epoch_iterator()
    try:
        for rows, _ in epoch:
            batch = EncodedBatch.from_rows(np.array(rows, copy=True))  # FFCV reuses its buffer
            rows_np = batch.rows.numpy()
            keep = np.flatnonzero(batch.modes == JPG)
            streams = [rows_np[k, HEADER_BYTES:HEADER_BYTES + batch.lengths[k]] for k in keep]
            sizes = np.stack([batch.heights[keep], batch.widths[keep]], 1)
            boxes, _ = random_crops_and_flips(0, 0, batch.indices[keep], sizes[:, 0], sizes[:, 1])
            out.append((streams, sizes, boxes))
            if len(out) == count:
                break
    finally:
        epoch.close()
    return out


def decoder_cases(device, workers: int) -> list[dict]:
    """The decoder microbenchmark's cases, in order (the first whole-image one is the pixel
    reference): name, decoder kind, nvImageCodec backends and threads, modes."""
    if device.type != "cuda":
        return [dict(name="cpu", kind="cpu", modes=("whole", "regions")),
                dict(name="torchvision", kind="torchvision", modes=("whole",))]
    torchvision = dict(name="torchvision", kind="torchvision", modes=("whole",))
    if jpeg_decoders.unavailable_reason("nvimgcodec") is not None:
        return [torchvision]
    lists = [dict(name=f"nvimgcodec {label}", kind="nvimgcodec", backends=spec, threads=workers,
                  modes=("whole", "regions")) for label, spec in NV_BACKEND_LISTS.items()]
    threads = [dict(name=f"nvimgcodec shipped, {count} threads", kind="nvimgcodec",
                    backends=jpeg_decoders.NVIMGCODEC_BACKENDS, threads=count, modes=("regions",))
               for count in (0, 1) if count != workers]
    return lists[:1] + [torchvision] + lists[1:] + threads  # the baselines first


def make_decoder(case: dict, device):
    if case["kind"] == "cpu":
        return jpeg_decoders.CpuDecoder(device)
    if case["kind"] == "torchvision":
        return jpeg_decoders.TorchvisionDecoder(device)
    # no start-up probe: a backend list that refuses its small test image is still measured
    return jpeg_decoders.NvImageCodecDecoder(device, case["threads"], backends=case["backends"],
                                             probe=False)


def _chw(image) -> torch.Tensor:
    """(3, H, W) tensor of a decoded image (a device tensor, or an HWC array from the host)."""
    if isinstance(image, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    return image


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:160]}"


def pixel_diff(images: list, reference: list, boxes, regions: bool) -> dict:
    """|images - reference| (0-255) over the images both have; reference images are whole ones,
    cropped to each box where `images` are regions. Exact percentiles from a histogram."""
    hist, missing, mismatched = None, 0, 0
    for image, ref, box in zip(images, reference, boxes):
        if image is None or ref is None:
            missing += 1
            continue
        top, left, h, w = (int(v) for v in box)
        ref = ref[:, top:top + h, left:left + w] if regions else ref
        if tuple(image.shape) != tuple(ref.shape):
            mismatched += 1
            continue
        counts = torch.bincount((image.int() - ref.int()).abs().flatten(), minlength=256)
        hist = counts if hist is None else hist + counts
    out = {"compared": len(images) - missing - mismatched, "missing": missing, "mismatched": mismatched}
    if hist is None:
        return {**out, "ok": False}
    hist = hist.cpu().numpy().astype(np.float64)  # one read-back per case
    cdf = np.cumsum(hist) / hist.sum()
    out.update(mean_abs_diff=float((hist * np.arange(len(hist))).sum() / hist.sum()),
               p99_abs_diff=float(np.searchsorted(cdf, 0.99)), max_abs_diff=int(np.flatnonzero(hist)[-1]))
    out["ok"] = (missing == mismatched == 0 and out["mean_abs_diff"] < PIXELS_OK["mean_abs_diff"]
                 and out["p99_abs_diff"] < PIXELS_OK["p99_abs_diff"])
    return out


def decoder_alone(path, args, device) -> dict:
    """Each decoder case by itself: one warm-up batch, then the others timed (host clock around
    the calls, a device synchronisation at each end); its first --check-images images vs the
    first whole-image case's. Cases that would start after --decoder-seconds are skipped."""
    data = stored_batches(path, args, max(2, args.decode_batches))
    (streams0, sizes0, boxes0), timed = data[0], data[1:]
    images = sum(len(s) for s, _, _ in timed)
    check = min(args.check_images, len(streams0))
    out = {"batch_size": len(streams0), "timed_batches": len(timed), "timed_images": images,
           "cases": {}}
    cases, reference, begun_all = out["cases"], None, time.perf_counter()
    for case in decoder_cases(device, args.workers):
        keys = [f"{case['name']}, {mode}" for mode in case["modes"]]
        about = {k: case[k] for k in ("kind", "backends", "threads") if k in case}
        if time.perf_counter() - begun_all > args.decoder_seconds:
            cases.update({key: {**about, "skipped": "--decoder-seconds spent"} for key in keys})
            continue
        built = time.perf_counter()
        try:
            decoder = make_decoder(case, device)
            sync(device)
        except Exception as err:  # recorded: e.g. a backend list nvImageCodec refuses
            cases.update({key: {**about, "error": f"building: {_one_line(err)}"} for key in keys})
            continue
        build_s = time.perf_counter() - built
        for key, mode in zip(keys, case["modes"]):
            regions = mode == "regions"
            result = cases[key] = {**about, "regions": regions, "build_s": build_s,
                                   "description": decoder.description}
            try:
                first = decoder.decode(streams0, sizes0, boxes0 if regions else None, 0)
                sample = [None if im is None else _chw(im).clone() for im in first[:check]]
                refused = sum(im is None for im in first)
                sync(device)
                host, started = [], time.perf_counter()
                for i, (streams, sizes, boxes) in enumerate(timed):
                    called = time.perf_counter()
                    got = decoder.decode(streams, sizes, boxes if regions else None, i % 3)
                    host.append(1000 * (time.perf_counter() - called))
                    refused += sum(im is None for im in got)
                sync(device)
                seconds = time.perf_counter() - started
            except Exception as err:  # recorded: e.g. a backend that cannot decode regions
                result["error"] = _one_line(err)
                continue
            result.update(images_per_s=images / seconds, host_ms_per_batch=statistics.median(host),
                          refused=refused, refused_of=len(streams0) + images)
            if reference is None and not regions and refused == 0:
                reference = (key, sample)
            if reference is not None:
                result["vs_first"] = {"case": reference[0],
                                      **pixel_diff(sample, reference[1], boxes0[:check], regions)}
            result["ok"] = refused == 0 and result.get("vs_first", {}).get("ok", False)
        del decoder
    out["seconds"] = time.perf_counter() - begun_all
    return out


def choose_full(decode_only: dict, args) -> dict:
    """nvImageCodec's configuration for the 'full' loader: the fastest microbenchmark case at the
    loader's thread count (which the loader passes on) that refused nothing and whose pixels
    agree with the first case's; the shipped defaults when no case qualifies."""
    best = None
    for key, r in decode_only["cases"].items():
        if r.get("kind") == "nvimgcodec" and r.get("threads") == args.workers and r.get("ok") and (
                best is None or r["images_per_s"] > best[1]["images_per_s"]):
            best = (key, r)
    if best is None:
        return {"backends": jpeg_decoders.NVIMGCODEC_BACKENDS, "regions": True, "case": None,
                "why": "no nvImageCodec case ran cleanly: the shipped configuration"}
    return {"backends": best[1]["backends"], "regions": best[1]["regions"], "case": best[0],
            "why": f"fastest clean nvImageCodec case ({best[1]['images_per_s']:,.0f} img/s)"}


def versions() -> dict:
    out = {}
    for name in ("torch", "torchvision", "triton", "torchcodec", "ffcv", "numpy"):
        try:
            out[name] = __import__(name).__version__
        except Exception as err:  # missing or broken: say which
            out[name] = f"unavailable ({type(err).__name__})"
    reason = jpeg_decoders.unavailable_reason("nvimgcodec")
    if reason:
        out["nvimgcodec"] = f"unavailable ({reason})"
    else:
        try:
            module, _ = jpeg_decoders._import_nvimgcodec()
            out["nvimgcodec"] = f"{module.__version__} (CUDA {module.__cuda_version__})"
        except Exception as err:
            out["nvimgcodec"] = f"unavailable ({type(err).__name__}: {err})"
    return out
