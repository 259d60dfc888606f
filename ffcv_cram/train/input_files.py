"""The files a run reads, checked before any work starts and before anything is inferred from
them (the class count from `<train_dataset>.classes.json`, the loaders' lengths): a wrong path is
named as such, with the option that gave it."""
from __future__ import annotations

import os

from ..config import UsageError


def _problem(path: str) -> str | None:
    if os.path.isdir(path):
        return "a folder, not a file"
    if not os.path.isfile(path):
        return "no such file"
    if not os.access(path, os.R_OK):
        return "not readable; fix the file's permissions"
    return None


def _resumes(cfg: dict) -> bool:
    """Whether the run folder holds a run that this one continues (train.checkpoint.LAST, named
    here without importing torch)."""
    return (cfg["checkpoint"]["resume"]
            and os.path.isfile(os.path.join(cfg["logging"]["folder"], "checkpoint_last.pt")))


def check_input_files(cfg: dict) -> None:
    """Refuse a --data.train_dataset / --data.val_dataset / --training.init_weights that is not
    a readable file (the empty val_dataset and init_weights mean: none; init_weights is not read
    when the run resumes)."""
    fixes = {"data.train_dataset": "check the path, or write the .beton with write_datasets.py",
             "data.val_dataset": "check the path, write the .beton with write_datasets.py, or "
                                 "pass --data.val_dataset= to skip evaluation",
             "training.init_weights": "check the path (a .pt / .pth file of model weights)"}
    for key, fix in fixes.items():
        section, name = key.split(".")
        path = cfg[section][name]
        if key != "data.train_dataset" and not path:
            continue
        if key == "training.init_weights" and _resumes(cfg):
            continue  # read only at a run's start
        problem = _problem(path)
        if problem:
            raise UsageError(f"--{key}={path}: {problem}; {fix}")
