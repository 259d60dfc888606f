"""Atomic checkpoints holding everything a run needs to continue bit-identically.

Everything in a checkpoint is a tensor or a plain Python value, so that it loads with
`torch.load(weights_only=True)`, which runs no code from the file (see `safe_load`). Checkpoints
written before that held NumPy's RNG state as an array; they load only when the user trusts them.
"""
from __future__ import annotations

import hashlib
import random

import numpy as np
import torch
from torch import nn

from .. import safe_load
from ..atomic import torch_save
from ..models.compiled import plain_module

FORMAT = "ffcv_cram.checkpoint/1"
LAST = "checkpoint_last.pt"
FINAL_WEIGHTS = "final_weights.pt"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / DataParallel / torch.compile wrappers."""
    return plain_module(model)


def plain_state_dict(model: nn.Module) -> dict:
    """A state_dict without wrapper prefixes, on the CPU: torchvision / our models load it as is."""
    return {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}


def parameters_sha256(model: nn.Module) -> str:
    """SHA-256 of the parameters' values in order, whatever their device and memory format."""
    digest = hashlib.sha256()
    for p in unwrap(model).parameters():
        digest.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def rng_state() -> dict:
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),  # plain: a tuple of ints (and a float or None)
             "numpy": {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": pos,
                       "has_gauss": has_gauss, "gauss": gauss},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state(saved) -> tuple:
    if not isinstance(saved, dict):  # written before checkpoints loaded with weights_only
        return saved
    return (saved["kind"], saved["key"].numpy().astype(np.uint32), saved["pos"],
            saved["has_gauss"], saved["gauss"])


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(_numpy_state(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str, *, model, optimizer, scaler, epoch: int, step: int, config: dict,
                    draws: dict, best: dict | None = None, epoch_so_far: dict | None = None) -> None:
    """`epoch`: the epoch to continue with; `epoch_so_far` (`EpochSoFar.to_dict()`): how much of
    it is done, written mid-epoch (None at an epoch's end)."""
    torch_save({"format": FORMAT, "epoch": epoch, "step": step,
                 "model": plain_state_dict(model), "optimizer": optimizer.state_dict(),
                 "scaler": scaler.state_dict() if scaler is not None else None,
                 "rng": rng_state(), "config": config, "draws": draws, "best": best,
                 "epoch_so_far": epoch_so_far}, path)


def load_checkpoint(path: str, trusted: bool = False) -> dict:
    """Loaded with weights_only (nothing in the file runs) unless `trusted`: raises
    safe_load.UnsafeFile for a file that needs full unpickling (e.g. one of ours written before)."""
    state = safe_load.load(path, trusted)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not an ffcv-cram checkpoint")
    return state
