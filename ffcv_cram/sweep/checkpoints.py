"""Reading model weights from every checkpoint format a user is likely to hold.

Accepted: ffcv-cram's final_weights.pt (a plain state_dict) and checkpoint_last.pt; plain
torchvision state_dicts; DDP / DataParallel `module.`-prefixed state_dicts (ffcv-imagenet's
final_weights.pt) and torch.compile's `_orig_mod.` prefix; the reference CrAM format
{'epoch', 'model_config', 'model_state_dict', 'optimizer': {...}, 'lr_scheduler': {...}}.
All of them load with weights_only (see `safe_load`): a file that needs more is refused unless the
user trusts it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from ..safe_load import UnsafeFile, load

WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(Exception):
    """A checkpoint that cannot be used (one-line message naming the file and the fix)."""


def _strip(state: dict) -> dict:
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


@dataclass
class Checkpoint:
    state: dict  # the model's state_dict, wrapper prefixes removed
    config: dict | None  # the training run's configuration, when the file holds one (ours do)


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
    return Checkpoint(_state_dict(obj, path), config if isinstance(config, dict) else None)


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
            parts.append(f"{len(wrong)} with other shapes (e.g. {k}: {tuple(state[k].shape)} vs "
                         f"{tuple(own[k].shape)})")
        raise CheckpointError(f"{path} does not fit --model.arch={arch}: {'; '.join(parts)}; "
                              "check --model.arch and --model.num_classes")
