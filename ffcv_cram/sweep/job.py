"""The eval_sparse.py job: every check first, then the model, loaders, the sweep and the reports.

Under torchrun the items of the sweep are split over the processes (`ranks`), each process on its
own device with the whole validation and calibration sets; rank 0 gathers the results, prints
the progress and writes the reports.
"""
from __future__ import annotations

import os
import sys

import torch
from torch import nn

from ..config import UsageError
from ..data.threads import loader_threads, local_processes, thread_summary, usable_cores
from ..models import get_model
from ..models.compiled import compile_model, compile_problem
from ..runtime.dist import Context, all_sum, setup, teardown
from ..safe_load import UnsafeFile
from . import run_settings
from ..models.checkpoints import CheckpointError, check_fits, load_checkpoint
from .checks import calibration_indices, check_arguments, check_model_and_data
from .datasets import upsampling_warning
from .points import Item, SweepSettings, measure, rows_of, work_items
from .precision import eval_amp_dtype
from .ranks import run_split
from .report import text_table, write_reports


def _load_all(cfg: dict) -> list:
    checkpoints = []
    for path in cfg["eval"]["checkpoint"]:
        try:
            checkpoints.append(load_checkpoint(path, trusted=cfg["eval"]["trust_checkpoint"]))
        except CheckpointError as err:
            raise UsageError(str(err)) from None
        except UnsafeFile as err:
            raise UsageError(err.explain("--eval.trust_checkpoint=1")) from None
    return checkpoints


def _check_blurpool(cfg: dict, checkpoints: list) -> None:
    for path, checkpoint in zip(cfg["eval"]["checkpoint"], checkpoints):
        if checkpoint.blurpool and not cfg["model"]["blurpool"]:
            raise UsageError(f"{path}: trained with BlurPool (ffcv-imagenet's blur_filter keys); "
                             "evaluate it with --model.blurpool=1")


def _with_run_settings(cfg: dict, checkpoints: list, given: set[str]) -> tuple[dict, str | None]:
    """`cfg` with the training runs' model and data settings where the user gave none."""
    trusted = cfg["eval"]["trust_checkpoint"]
    runs = [run_settings.run_config(path, checkpoint.config, trusted)
            for path, checkpoint in zip(cfg["eval"]["checkpoint"], checkpoints)]
    taken, note = run_settings.infer(runs, given)
    return run_settings.apply(cfg, taken), note


def build_model(cfg: dict, num_classes: int, device: torch.device) -> nn.Module:
    """The model every point is loaded, pruned and tuned on."""
    model = get_model(cfg["model"]["arch"], num_classes, cfg["model"]["blurpool"])
    return model.to(device, memory_format=torch.channels_last)


def evaluated_model(cfg: dict, model: nn.Module, device: torch.device) -> nn.Module:
    """What runs the evaluations: `model`, or with --eval.compile the compiled model sharing its
    parameters (two graphs: full batches and the smaller last one)."""
    if not cfg["eval"]["compile"]:
        return model
    problem = compile_problem(device)
    if problem:
        raise UsageError(f"--eval.compile: {problem}")
    workers = max(1, usable_cores() // local_processes())  # this process's share of the cores
    return compile_model(model, cfg["eval"]["compile_mode"], workers=workers)


def _loaders(cfg: dict, device: torch.device, indices):
    """The validation loader, and the calibration loader (None without batch-norm tuning);
    prints the thread count once."""
    from ..data.loader_options import LoaderOptions
    from ..data.pipelines import ImageLoader
    d, b = cfg["data"], cfg["bnt"]
    # validation and calibration loaders take turns (evaluate, tune, evaluate), never at once
    options = LoaderOptions.from_data_section(d, num_workers=loader_threads(d["num_workers"]),
                                              device=device)
    if os.environ.get("RANK", "0") == "0":  # once, also when torchrun starts several processes
        print(thread_summary(d["num_workers"]), flush=True)
    val = ImageLoader(d["val_dataset"], train=False, batch_size=cfg["eval"]["batch_size"],
                      resolution=d["resolution"], options=options)
    if not b["batches"]:
        return val, None
    calib = ImageLoader(d["calib_dataset"] or d["train_dataset"], train=b["augment"],
                        batch_size=b["batch_size"], resolution=d["resolution"], drop_last=False,
                        seed=b["seed"], indices=indices, options=options)
    return val, calib


def _progress_line(labels: list[str], world_size: int):
    def report(done: int, total: int, item: Item, result: dict, rank: int, seconds: float):
        where = f", rank {rank}" if world_size > 1 else ""
        head = f"[{done}/{total}] {labels[item.checkpoint]}"
        point = item.target
        if point is None:
            text = f"{head} dense: top-1 {result['top1']:.2f}%"
        else:
            target = point.pattern or f"{100 * point.sparsity:g}%"
            text = f"{head} {point.method} {target}: pruned {result['pruned_top1']:.2f}%"
            if result["bnt_top1"] is not None:
                text += f", + BNT {result['bnt_top1']:.2f}%"
        print(f"{text} ({seconds:.1f} s{where})", flush=True)
    return report


def _decode_notes(loaders: dict, ctx: Context) -> str:
    """Corrupt JPEGs met by the loaders of every rank (a collective: every rank calls it)."""
    counts = all_sum([float(n) for loader in loaders.values() if loader is not None
                      for n in (loader.decode_fallbacks, loader.decode_failures)], ctx)
    named = [name for name, loader in loaders.items() if loader is not None]
    notes = []
    for i, name in enumerate(named):
        fallbacks, failures = int(counts[2 * i]), int(counts[2 * i + 1])
        if fallbacks or failures:
            notes.append(f"\n{name}: {fallbacks} corrupt JPEGs decoded on the CPU, "
                         f"{failures} unreadable (blank images)")
    return "".join(notes)


def run_sweep(cfg: dict, given: set[str] = frozenset()):
    """Check, sweep, report. `given`: the keys the user set (the others may come from the
    training runs). Returns (rows, output paths, printed table) on rank 0, None on the others."""
    try:
        points, labels, momentum = check_arguments(cfg)
        checkpoints = _load_all(cfg)
        cfg, note = _with_run_settings(cfg, checkpoints, given)
        _check_blurpool(cfg, checkpoints)
        num_classes = check_model_and_data(cfg)
        d = cfg["data"]
        warning = upsampling_warning(d["val_dataset"], d["style"], d["resolution"])
        indices = calibration_indices(cfg) if cfg["bnt"]["batches"] else None
    except UsageError as err:
        err.same_on_every_rank = True  # the same inputs in every torchrun process
        raise
    try:
        ctx = setup(cfg["eval"]["device"], cfg["eval"]["dist_timeout"], option="--eval.device")
    except ValueError as err:
        raise UsageError(str(err)) from None
    try:
        return _sweep(cfg, ctx, checkpoints, points, labels, momentum, num_classes, indices,
                      note, warning)
    finally:
        teardown()


def _sweep(cfg, ctx: Context, checkpoints, points, labels, momentum, num_classes, indices,
           note, warning):
    if ctx.is_main:
        if note:
            print(note, flush=True)
        if warning:
            print(warning, file=sys.stderr, flush=True)
    amp_dtype = eval_amp_dtype(cfg["eval"]["amp"], ctx.device)
    if ctx.is_main:
        print(f"precision: {'bf16 autocast' if amp_dtype else 'float32'} for evaluations and "
              f"batch-norm tuning (--eval.amp={cfg['eval']['amp']})", flush=True)
    model = build_model(cfg, num_classes, ctx.device)
    for path, checkpoint in zip(cfg["eval"]["checkpoint"], checkpoints):
        try:
            check_fits(model, checkpoint.state, path, cfg["model"]["arch"])
        except CheckpointError as err:
            raise UsageError(str(err)) from None
    evaluated = evaluated_model(cfg, model, ctx.device)
    val, calib = _loaders(cfg, ctx.device, indices)
    settings = SweepSettings(
        bnt_batches=cfg["bnt"]["batches"], bnt_momentum=momentum, bnt_seed=cfg["bnt"]["seed"],
        amp_dtype=amp_dtype, progress=ctx.is_main,
        save_pruned_dir=os.path.join(cfg["out"]["dir"], "pruned") if cfg["out"]["save_pruned"] else None)
    items = work_items(len(checkpoints), points)

    def measure_item(item: Item) -> dict:
        return measure(item, labels[item.checkpoint], model, checkpoints[item.checkpoint].state,
                       val, calib, settings, ctx.device, evaluated)

    results = run_split(items, measure_item, ctx, _progress_line(labels, ctx.world_size))
    notes = _decode_notes({"validation": val, "calibration": calib}, ctx)
    if not ctx.is_main:
        return None
    rows = rows_of(items, results, labels, cfg["eval"]["checkpoint"])
    paths = write_reports(rows, cfg["out"]["dir"], cfg["model"]["arch"])
    return rows, paths, text_table(rows) + notes
