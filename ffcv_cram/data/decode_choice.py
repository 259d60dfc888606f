"""The --data.decode choice of the command-line tools, checked before any work starts."""
from __future__ import annotations

DECODES = ("cpu", "gpu", "auto")


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
