"""Run-aware defaults: the model and data settings of the training run that wrote a checkpoint.

A run folder of our trainer holds `config.json` (every key of the run) beside `final_weights.pt`,
and `checkpoint_last.pt` / `checkpoint_epoch<N>.pt` carry the same configuration inside. From it
come the architecture, the class count, BlurPool, the data style, the evaluation resolution and
the CIFAR input scale, each unless the user gave it. Without them a CIFAR model would be evaluated ImageNet-style:
32 px images centre-cropped and resized to 224 px (about 50x the compute, other accuracies).
"""
from __future__ import annotations

import json
import os

from ..config import UsageError
from ..safe_load import UnsafeFile
from ..models.checkpoints import CheckpointError, load_checkpoint

CONFIG = "config.json"
LAST = "checkpoint_last.pt"
KEYS = ("model.arch", "model.num_classes", "model.blurpool", "data.style", "data.resolution",
        "data.cifar_inputs")
# a CIFAR run saved before data.cifar_inputs existed was normalised with CIFAR-10's true std
UNRECORDED_CIFAR_INPUTS = "cifar10_std"


def _is_training_config(config) -> bool:
    """Ours, not some other tool's config.json (e.g. a Hugging Face model folder's)."""
    return (isinstance(config, dict) and isinstance(config.get("model"), dict)
            and isinstance(config["model"].get("arch"), str)
            and isinstance(config.get("resolution"), dict) and isinstance(config.get("training"), dict))


def _classes(dataset) -> int | None:
    try:
        with open(f"{dataset}.classes.json") as f:
            return len(json.load(f))
    except (OSError, TypeError, ValueError):
        return None


def settings_of(config: dict) -> dict:
    """{'section.key': value} for eval_sparse.py from a training run's configuration.

    The trainer's style is not a key: train_imagenet.py requires resolution.val_res and
    train_cifar.py refuses it, so a run with val_res is ImageNet-style, evaluated at val_res."""
    model, resolution = config["model"], config["resolution"]
    found = {"model.arch": model["arch"], "model.blurpool": bool(model.get("blurpool", False))}
    classes = model.get("num_classes") or _classes(config.get("data", {}).get("train_dataset"))
    if isinstance(classes, int) and classes > 0:
        found["model.num_classes"] = classes
    if resolution.get("val_res"):
        found.update({"data.style": "imagenet", "data.resolution": int(resolution["val_res"])})
    else:
        found["data.style"] = "cifar"
        found["data.cifar_inputs"] = config.get("data", {}).get("cifar_inputs",
                                                                UNRECORDED_CIFAR_INPUTS)
    return found


def _quiet_config(path: str, trusted: bool) -> dict | None:
    """The configuration inside a checkpoint file, or None if it holds none or cannot be read."""
    try:
        return load_checkpoint(path, trusted).config
    except (CheckpointError, UnsafeFile):
        return None


def run_config(checkpoint: str, own_config: dict | None, trusted: bool = False):
    """(configuration, where it was found) of the run that wrote `checkpoint`, or None:
    config.json beside it, else the checkpoint's own, else checkpoint_last.pt beside it."""
    folder = os.path.dirname(os.path.abspath(checkpoint))
    beside = os.path.join(folder, CONFIG)
    try:
        with open(beside) as f:
            config = json.load(f)
        if _is_training_config(config):
            return config, beside
    except (OSError, ValueError):
        pass
    if _is_training_config(own_config):
        return own_config, checkpoint
    last = os.path.join(folder, LAST)
    if os.path.isfile(last) and os.path.abspath(last) != os.path.abspath(checkpoint):
        config = _quiet_config(last, trusted)
        if _is_training_config(config):
            return config, last
    return None


def _shown(value) -> str:
    return str(int(value)) if isinstance(value, bool) else str(value)


def infer(runs: list, given: set[str]) -> tuple[dict, str | None]:
    """Settings to apply ({'section.key': value}) and the line that says so, from the
    (configuration, source) pairs of the checkpoints' runs (None: a checkpoint without one).
    Keys the user gave are kept; runs that disagree on another key are refused."""
    found = [(settings_of(config), source) for config, source in filter(None, runs)]
    taken: dict = {}
    for key in KEYS:
        if key in given:
            continue
        values = [(settings[key], source) for settings, source in found if key in settings]
        if len({value for value, _ in values}) > 1:
            shown = ", ".join(f"{_shown(value)} ({source})" for value, source in values)
            raise UsageError(f"the checkpoints come from runs that differ in --{key}: {shown}; "
                             f"evaluate them in separate sweeps, or give --{key}")
        if values:
            taken[key] = values[0][0]
    if not taken:
        return {}, None
    sources = ", ".join(dict.fromkeys(source for _, source in found))
    keys = " ".join(f"--{key}={_shown(value)}" for key, value in taken.items())
    return taken, f"settings of the training run ({sources}): {keys}"


def apply(cfg: dict, taken: dict) -> dict:
    """A copy of `cfg` with the taken settings filled in."""
    out = {section: dict(values) for section, values in cfg.items()}
    for key, value in taken.items():
        section, name = key.split(".")
        out[section][name] = value
    return out
