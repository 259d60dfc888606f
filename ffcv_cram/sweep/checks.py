"""eval_sparse.py's refusals: each user mistake is one UsageError, raised before any work."""
from __future__ import annotations

import os

import numpy as np

from ..config import UsageError, num_classes as config_num_classes
from ..data.decode_choice import decode_problem
from ..data.jpeg_decoders import jpeg_decoder_problem
from ..models import available_models
from ..sparsity.masks import parse_pattern
from .datasets import labels_of
from .points import Target, targets

METHODS = ("global", "uniform", "nm")


def bnt_momentum(text: str) -> float | None:
    if text.strip().lower() == "cumulative":
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--bnt.momentum={text!r}: a number in (0, 1] or 'cumulative'") from None
    if not 0 < value <= 1:
        raise UsageError(f"--bnt.momentum={text!r}: a number in (0, 1] or 'cumulative'")
    return value


def default_label(path: str) -> str:
    name = os.path.splitext(os.path.basename(path))[0]
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return f"{parent}/{name}" if name in ("final_weights", "checkpoint_last") and parent else name


def check_arguments(cfg: dict) -> tuple[list[Target], list[str], float | None]:
    """The checks that need neither the checkpoints nor the model: (points, labels, momentum)."""
    e, d, p, b = cfg["eval"], cfg["data"], cfg["prune"], cfg["bnt"]
    if e["compile_mode"] != "default" and not e["compile"]:
        raise UsageError(f"--eval.compile_mode={e['compile_mode']}: needs --eval.compile=1")
    problem = (decode_problem(d["decode"], "--eval.device", e["device"])
               or jpeg_decoder_problem(d["jpeg_decoder"]))
    if problem:
        raise UsageError(problem)
    for method in p["method"]:
        if method not in METHODS:
            raise UsageError(f"--prune.method={method!r}: must be one of {', '.join(METHODS)}")
    bad = [s for s in p["sparsities"] if not 0 <= s < 1]
    if bad:
        raise UsageError(f"--prune.sparsities: {bad[0]} is outside [0, 1)")
    try:
        patterns = [parse_pattern(x) for x in p["nm"]]
    except ValueError as err:
        raise UsageError(f"--prune.nm: {err}") from None
    labels = e["labels"] or [default_label(c) for c in e["checkpoint"]]
    if len(labels) != len(e["checkpoint"]):
        raise UsageError(f"--eval.labels: {len(labels)} labels for {len(e['checkpoint'])} checkpoints")
    if len(set(labels)) != len(labels):
        raise UsageError(f"--eval.labels: names must differ ({', '.join(labels)})")
    if b["batches"] and bool(d["calib_dataset"]) == bool(d["train_dataset"]):
        raise UsageError("give exactly one of --data.calib_dataset (a calibration .beton) or "
                         "--data.train_dataset (with --bnt.calib_size and --bnt.seed), or "
                         "--bnt.batches=0 to sweep without batch-norm tuning")
    for key in ("val_dataset",) + (("calib_dataset", "train_dataset") if b["batches"] else ()):
        if d[key] and not os.path.isfile(d[key]):
            raise UsageError(f"--data.{key}={d[key]}: no such file (write it with write_datasets.py)")
    return targets(p["method"], p["sparsities"], patterns), labels, bnt_momentum(b["momentum"])


def check_model_and_data(cfg: dict) -> int:
    """The checks on the (possibly run-aware) model settings; returns the class count."""
    if cfg["model"]["arch"] not in available_models():
        raise UsageError(f"--model.arch={cfg['model']['arch']!r}: unknown model")
    val = cfg["data"]["val_dataset"]
    num_classes = config_num_classes(cfg["model"]["num_classes"], val)
    top = int(labels_of(val).max())
    if top >= num_classes:
        raise UsageError(f"{val}: holds label {top} but the model has {num_classes} "
                         "classes; check --model.num_classes")
    return num_classes


def calibration_indices(cfg: dict) -> np.ndarray | None:
    """The seeded calibration subset of --data.train_dataset (None: the calibration set whole)."""
    d, b = cfg["data"], cfg["bnt"]
    if d["calib_dataset"]:
        return None
    n = len(labels_of(d["train_dataset"]))
    if b["calib_size"] > n:
        raise UsageError(f"--bnt.calib_size={b['calib_size']} but {d['train_dataset']} holds {n} images")
    return np.sort(np.random.default_rng(b["seed"]).choice(n, b["calib_size"], replace=False))
