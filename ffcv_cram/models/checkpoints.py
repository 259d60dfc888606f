"""Reading model weights from every checkpoint format a user is likely to hold.

Accepted: ffcv-cram's final_weights.pt (a plain state_dict) and checkpoint_last.pt; plain
torchvision state_dicts; DDP / DataParallel `module.`-prefixed state_dicts and torch.compile's
`_orig_mod.` prefix; ffcv-imagenet's final_weights.pt (`module.`-prefixed, and its BlurPool
modules' keys `<conv>.conv.weight` / `<conv>.blur_filter` mapped to ours, `<conv>.weight`, after
checking the filter is the binomial blur our BlurPool applies); the reference CrAM format
{'epoch', 'model_config', 'model_state_dict', 'optimizer': {...}, 'lr_scheduler': {...}}.
All of them load with weights_only (see `safe_load`): a file that needs more is refused unless the
user trusts it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from .blurpool import blur_filter
from ..safe_load import UnsafeFile, load

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
BLUR_FILTER = ".blur_filter"  # ffcv-imagenet's BlurPoolConv2d: a buffer beside its `conv`


class CheckpointError(Exception):
    """A checkpoint that cannot be used (one-line message naming the file and the fix)."""


def _strip(state: dict) -> dict:
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _from_ffcv_blurpool(state: dict, path: str) -> tuple[dict, bool]:
    """ffcv-imagenet's BlurPool keys as ours; True when the file had any."""
    blurred = [k[:-len(BLUR_FILTER)] for k in state if k.endswith(BLUR_FILTER)]
    for conv in blurred:
        found = state[conv + BLUR_FILTER]
        expected = blur_filter(found.shape[0], dtype=found.dtype)
        if found.shape != expected.shape or not torch.allclose(found, expected):
            raise CheckpointError(f"{path}: {conv}{BLUR_FILTER} is not ffcv-imagenet's binomial "
                                  "blur, which is the only BlurPool this model has")
    if not blurred:
        return state, False
    renamed = {}
    for key, value in state.items():
        conv = next((c for c in blurred if key.startswith(c + ".conv.")), None)
        if key.endswith(BLUR_FILTER):
            continue
        renamed[key if conv is None else conv + key[len(conv) + len(".conv"):]] = value
    return renamed, True


@dataclass
class Checkpoint:
    state: dict  # the model's state_dict, wrapper prefixes removed
    config: dict | None  # the training run's configuration, when the file holds one (ours do)
    blurpool: bool = False  # the file's key names say it was trained with BlurPool (ffcv-imagenet)


def load_checkpoint(path: str, trusted: bool = False) -> Checkpoint:
    """The weights in `path`, whatever the format (see the module doc), and the configuration of
    the run that wrote it if the file carries one. Raises UnsafeFile for a file that needs full
    unpickling, unless `trusted`."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = load(path, trusted)
    except UnsafeFile:
        raise
    except Exception as err:  # pickle, zip and torch errors all mean "not a checkpoint"
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(err).__name__})") from None
    config = obj.get("config") if isinstance(obj, dict) else None
    state, blurpool = _from_ffcv_blurpool(_state_dict(obj, path), path)
    return Checkpoint(state, config if isinstance(config, dict) else None, blurpool)


def load_state_dict(path: str, trusted: bool = False) -> dict:
    """The model's state_dict from `path` (see `load_checkpoint`)."""
    return load_checkpoint(path, trusted).state


def _state_dict(obj, path: str) -> dict:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state_dict")
    for key in ("model_state_dict", "model", "state_dict"):  # reference CrAM / ours / common
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state = _strip({k: v for k, v in obj.items() if isinstance(v, torch.Tensor)})
    if not state:
        raise CheckpointError(f"{path}: no model weights found (keys: {', '.join(list(obj)[:6])})")
    return state


def _summary(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > limit else ''})"


def check_fits(model: nn.Module, state: dict, path: str, arch: str) -> None:
    """Refuse a state_dict that does not match `model` exactly, summarising the mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {_summary(missing)}")
        if unexpected:
            parts.append(f"unexpected {_summary(unexpected)}")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} with other shapes (first: {k}, {tuple(state[k].shape)} "
                         f"in the file, {tuple(own[k].shape)} in the model)")
        raise CheckpointError(f"{path} does not fit --model.arch={arch}: {'; '.join(parts)}; "
                              "check --model.arch and --model.num_classes")
