"""gpu_check section 1: what the machine is, and whether nvJPEG uses the hardware JPEG decoder.

GPU, driver, CUDA, cuDNN, NCCL, torch, torchvision, triton, numba, whether ffcv / fastargs load,
and the JPEG engine's utilisation (NVML) while torchvision decodes a batch on the GPU: above zero
means the hardware decoder does the work, zero means nvJPEG decodes on the CUDA cores.
Saves gpu_env.json (bench/common.py save_result).
"""
from __future__ import annotations

import argparse
import importlib
import threading
import time

import numpy as np
import torch

from common import environment, save_result
from natural_images import natural_image


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "present")
    except Exception as err:  # what failed is the finding: report it, don't stop
        return f"not importable: {type(err).__name__}: {err}".splitlines()[0][:200]


def versions() -> dict:
    out = {name: _version(name) for name in
           ("torchvision", "triton", "numpy", "numba", "ffcv", "fastargs", "wandb", "cv2")}
    if out["ffcv"][:3] != "not":
        out["ffcv_compiled_part"] = _version("ffcv.libffcv")
    out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if torch.cuda.is_available():
        out["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        props = torch.cuda.get_device_properties(0)
        out["compute_capability"] = f"{props.major}.{props.minor}"
        out["multiprocessors"] = props.multi_processor_count
    return out


class JpegEngineSampler:
    """Polls NVML's JPEG-engine utilisation in a thread; `peak` is the highest reading in %."""

    def __init__(self):
        import pynvml
        pynvml.nvmlInit()
        self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        self.read()  # raises here if this driver or binding has no JPEG counter
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self) -> int:
        return int(self.nvml.nvmlDeviceGetJpgUtilization(self.handle)[0])

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.read())
            time.sleep(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def jpeg_streams(count: int, dry_run: bool) -> list[torch.Tensor]:
    from torchvision.io import encode_jpeg
    rng = np.random.default_rng(0)
    size = (48, 64) if dry_run else (375, 500)
    images = [torch.from_numpy(natural_image(rng, *size)).permute(2, 0, 1).contiguous()
              for _ in range(8)]
    return [encode_jpeg(images[i % len(images)], quality=90) for i in range(count)]


def nvjpeg_probe(dry_run: bool, seconds: float = 3.0) -> dict:
    """Decode batches of 128 JPEGs on the GPU for a few seconds while sampling the JPEG engine."""
    from torchvision.io import ImageReadMode, decode_jpeg
    streams = jpeg_streams(128, dry_run)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    decode = lambda: decode_jpeg(streams, mode=ImageReadMode.RGB, device=device)  # noqa: E731
    decode()  # warm-up: nvJPEG handles and buffers
    if dry_run:
        return {"decoded": len(decode()), "device": device}
    try:
        sampler = JpegEngineSampler()
    except Exception as err:
        sampler, reason = None, f"{type(err).__name__}: {err}"
    torch.cuda.synchronize()
    start, batches = time.perf_counter(), 0
    with sampler or _Nothing():
        while time.perf_counter() - start < seconds:
            decode()
            batches += 1
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    out = {"images_per_s": batches * len(streams) / elapsed, "image_size": "500x375 q90"}
    if sampler is None:
        out.update(hardware_decoder_used=None, jpeg_engine_reading=reason)
    else:
        out.update(hardware_decoder_used=sampler.peak > 0, jpeg_engine_peak_percent=sampler.peak)
    return out


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="no GPU needed: a tiny CPU decode")
    args = parser.parse_args()
    result = {"versions": versions(), "nvjpeg": nvjpeg_probe(args.dry_run)}
    env = environment()
    print(f"{env.get('gpu', 'no GPU')}, driver {env.get('driver')}, CUDA {env.get('cuda')}, "
          f"torch {env['torch']}, triton {env['triton']}, {env['cpu_count']} CPU cores")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()))
    print(f"nvJPEG: {result['nvjpeg']}")
    print(f"saved {save_result('gpu_env', result)}")


if __name__ == "__main__":
    main()
