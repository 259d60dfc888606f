"""The eval_sparse.py job: every check first, then loaders, the sweep and the reports."""
from __future__ import annotations

import os

import numpy as np
import torch

from ..config import UsageError, num_classes as config_num_classes
from ..data.decode_choice import decode_problem
from ..data.threads import loader_threads, thread_summary
from ..models import available_models, get_model
from ..safe_load import UnsafeFile
from ..runtime.dist import resolve_device
from ..sparsity.masks import parse_pattern
from .checkpoints import CheckpointError, check_fits, load_state_dict
from .report import text_table, write_reports
from .points import SweepSettings, sweep_checkpoint, targets

METHODS = ("global", "uniform", "nm")


def _momentum(text: str) -> float | None:
    if text.strip().lower() == "cumulative":
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--bnt.momentum={text!r}: a number in (0, 1] or 'cumulative'") from None
    if not 0 < value <= 1:
        raise UsageError(f"--bnt.momentum={text!r}: a number in (0, 1] or 'cumulative'")
    return value


def _labels_of(path: str) -> np.ndarray:
    from ffcv.reader import Reader
    reader = Reader(path)
    position = list(reader.handlers).index("label")
    return np.asarray(reader.metadata[f"f{position}"])


def check(cfg: dict):
    """All refusals, before any work. Returns (points, labels, momentum, num_classes)."""
    e, d, p, b = cfg["eval"], cfg["data"], cfg["prune"], cfg["bnt"]
    problem = decode_problem(d["decode"], "--eval.device", e["device"])
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
    labels = e["labels"] or [_default_label(c) for c in e["checkpoint"]]
    if len(labels) != len(e["checkpoint"]):
        raise UsageError(f"--eval.labels: {len(labels)} labels for {len(e['checkpoint'])} checkpoints")
    if len(set(labels)) != len(labels):
        raise UsageError(f"--eval.labels: names must differ ({', '.join(labels)})")
    if bool(d["calib_dataset"]) == bool(d["train_dataset"]):
        raise UsageError("give exactly one of --data.calib_dataset (a calibration .beton) or "
                         "--data.train_dataset (with --bnt.calib_size and --bnt.seed)")
    for key in ("val_dataset", "calib_dataset", "train_dataset"):
        if d[key] and not os.path.isfile(d[key]):
            raise UsageError(f"--data.{key}={d[key]}: no such file (write it with write_datasets.py)")
    if cfg["model"]["arch"] not in available_models():
        raise UsageError(f"--model.arch={cfg['model']['arch']!r}: unknown model")
    momentum = _momentum(b["momentum"])
    num_classes = config_num_classes(cfg["model"]["num_classes"], cfg["data"]["val_dataset"])
    top = int(_labels_of(d["val_dataset"]).max())
    if top >= num_classes:
        raise UsageError(f"{d['val_dataset']}: holds label {top} but the model has {num_classes} "
                         "classes; check --model.num_classes")
    return targets(p["method"], p["sparsities"], patterns), labels, momentum, num_classes


def _default_label(path: str) -> str:
    name = os.path.splitext(os.path.basename(path))[0]
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return f"{parent}/{name}" if name in ("final_weights", "checkpoint_last") and parent else name


def _load_all(cfg, model) -> list[dict]:
    states = []
    for path in cfg["eval"]["checkpoint"]:
        try:
            state = load_state_dict(path, trusted=cfg["eval"]["trust_checkpoint"])
            check_fits(model, state, path, cfg["model"]["arch"])
        except CheckpointError as err:
            raise UsageError(str(err)) from None
        except UnsafeFile as err:
            raise UsageError(err.explain("--eval.trust_checkpoint=1")) from None
        states.append(state)
    return states


def _calibration_indices(cfg) -> np.ndarray | None:
    d, b = cfg["data"], cfg["bnt"]
    if d["calib_dataset"]:
        return None
    n = len(_labels_of(d["train_dataset"]))
    if b["calib_size"] > n:
        raise UsageError(f"--bnt.calib_size={b['calib_size']} but {d['train_dataset']} holds {n} images")
    return np.sort(np.random.default_rng(b["seed"]).choice(n, b["calib_size"], replace=False))


def _loaders(cfg: dict, device: torch.device, indices):
    """The validation and calibration loaders; prints the thread count once."""
    from ..data.pipelines import ImageLoader
    d, b = cfg["data"], cfg["bnt"]
    # validation and calibration loaders take turns (evaluate, tune, evaluate), never at once
    common = dict(style=d["style"], resolution=d["resolution"],
                  num_workers=loader_threads(d["num_workers"]), device=device,
                  in_memory=d["in_memory"], decode=d["decode"])
    if os.environ.get("RANK", "0") == "0":  # once, also when torchrun starts several processes
        print(thread_summary(d["num_workers"]), flush=True)
    val = ImageLoader(d["val_dataset"], train=False, batch_size=cfg["eval"]["batch_size"], **common)
    calib = ImageLoader(d["calib_dataset"] or d["train_dataset"], train=b["augment"],
                        batch_size=b["batch_size"], drop_last=False, seed=b["seed"],
                        indices=indices, **common)
    return val, calib


def run_sweep(cfg: dict):
    """Check, sweep, report. Returns (rows, output paths, printed table)."""
    points, labels, momentum, num_classes = check(cfg)
    try:
        device = resolve_device(cfg["eval"]["device"])
    except ValueError as err:
        raise UsageError(str(err)) from None
    model = get_model(cfg["model"]["arch"], num_classes, cfg["model"]["blurpool"])
    states = _load_all(cfg, model)
    val, calib = _loaders(cfg, device, _calibration_indices(cfg))
    model = model.to(device, memory_format=torch.channels_last)
    settings = SweepSettings(
        bnt_batches=cfg["bnt"]["batches"], bnt_momentum=momentum,
        amp_dtype=torch.bfloat16 if device.type == "cuda" else None,
        save_pruned_dir=os.path.join(cfg["out"]["dir"], "pruned") if cfg["out"]["save_pruned"] else None)
    rows = []
    for label, path, state in zip(labels, cfg["eval"]["checkpoint"], states):
        rows += sweep_checkpoint(label, path, model, state, val, calib, points, settings, device)
    paths = write_reports(rows, cfg["out"]["dir"])
    notes = [f"\n{name}: {loader.decode_fallbacks} corrupt JPEGs decoded on the CPU, "
             f"{loader.decode_failures} unreadable (blank images)"
             for name, loader in (("validation", val), ("calibration", calib))
             if loader.decode_fallbacks or loader.decode_failures]
    return rows, paths, text_table(rows) + "".join(notes)
