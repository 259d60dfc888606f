"""The precision of the sweep's evaluations and batch-norm tuning (`--eval.amp`). Importable
before torch: the command line declares its choices first."""
from __future__ import annotations

EVAL_AMP = ("auto", "bf16", "none")


def eval_amp_dtype(amp: str, device):
    """The autocast dtype (None: float32): `auto` is bf16 on CUDA (faster; the weights, the
    pruning masks and BatchNorm's statistics stay float32) and float32 on the CPU."""
    import torch
    if amp not in EVAL_AMP:
        raise ValueError(f"amp={amp!r}: must be one of {', '.join(EVAL_AMP)}")
    if amp == "auto":
        amp = "bf16" if torch.device(device).type == "cuda" else "none"
    return torch.bfloat16 if amp == "bf16" else None
