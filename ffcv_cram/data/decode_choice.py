"""The --data.decode / --data.jpeg_decoder / --data.gpu_prefetch choices of the command-line
tools, checked before any work starts."""
from __future__ import annotations

DECODES = ("cpu", "gpu", "auto")
JPEG_DECODERS = ("auto", "nvimgcodec", "torchcodec", "torchvision", "cpu")


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


def jpeg_decoder_problem(jpeg_decoder: str) -> str | None:
    """Why `--data.jpeg_decoder=<jpeg_decoder>` cannot be used here (None if it can): the choice
    of a decoder that is not installed, or built for another CUDA than torch's. (A loader still
    tests the decoder when it builds it, and refuses it then with the same kind of message.)"""
    from .jpeg_decoders import unavailable_reason
    reason = unavailable_reason(jpeg_decoder)
    if reason is None:
        return None
    return f"--data.jpeg_decoder={jpeg_decoder}: {reason}; use --data.jpeg_decoder=auto"
