"""The --data.decode / --data.jpeg_decoder / --data.gpu_prefetch choices and defaults of the
command-line tools, checked before any work starts. Imports nothing of the decoders: the command
lines declare their options from here before torch is loaded."""
from __future__ import annotations

DECODES = ("cpu", "gpu", "auto")
JPEG_DECODERS = ("auto", "nvimgcodec", "torchcodec", "torchvision", "cpu")
JPEG_DECODER_DEFAULT = "auto"
GPU_PREFETCH_DEFAULT = 2


def decode_problem(decode: str, device_option: str, device: str) -> str | None:
    """Why `--data.decode=<decode>` cannot run with `<device_option>=<device>` (None if it can)."""
    if decode != "gpu":
        return None
    import torch
    if not torch.cuda.is_available():
        return ("--data.decode=gpu needs a CUDA GPU and none is visible; use --data.decode=cpu "
                "(or auto, which picks the GPU when there is one)")
    if device == "cpu":
        return (f"--data.decode=gpu decodes on the GPU but {device_option}=cpu; use "
                f"{device_option}=cuda (or auto), or --data.decode=cpu")
    return None
