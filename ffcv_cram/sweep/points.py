"""The work of a sweep: for each checkpoint its dense accuracy, and for each (checkpoint, target)
point the accuracy after one-shot pruning and after batch-norm tuning, with the achieved sparsity
and where the time went. Each item depends only on its checkpoint and target, never on which
process ran it or what ran before: items can be split over processes (see `ranks`)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..atomic import torch_save
from ..runtime.evaluate import evaluate
from ..sparsity.bnt import tune_batchnorm
from ..sparsity.prune import prune_model


@dataclass(frozen=True)
class Target:
    """One point of a sweep: a method with a sparsity (global/uniform) or an N:M pattern."""
    method: str
    sparsity: float
    nm: tuple[int, int] | None = None

    @property
    def pattern(self) -> str | None:
        return f"{self.nm[0]}:{self.nm[1]}" if self.nm else None

    @property
    def name(self) -> str:
        return f"nm{self.nm[0]}-{self.nm[1]}" if self.nm else f"{self.method}{self.sparsity:g}"


def targets(methods, sparsities, patterns) -> list[Target]:
    out = []
    for method in methods:
        if method == "nm":
            out += [Target("nm", 1 - n / m, (n, m)) for n, m in patterns]
        else:
            out += [Target(method, s) for s in sparsities]
    return out


@dataclass(frozen=True)
class Item:
    """A unit of work: checkpoint number `checkpoint` evaluated dense (target None) or pruned."""
    checkpoint: int
    target: Target | None = None


def work_items(num_checkpoints: int, points: list[Target]) -> list[Item]:
    """Every item of a sweep, in a fixed order: the dense evaluations, then each checkpoint's
    points."""
    return ([Item(c) for c in range(num_checkpoints)]
            + [Item(c, t) for c in range(num_checkpoints) for t in points])


@dataclass
class SweepSettings:
    bnt_batches: int = 100  # 0: no batch-norm tuning
    bnt_momentum: float | None = 0.1
    bnt_seed: int = 0
    amp_dtype: torch.dtype | None = None
    channels_last: bool = True
    save_pruned_dir: str | None = None
    progress: bool = True


def _eval(model, loader, settings, desc) -> dict:
    return evaluate(model, loader, amp_dtype=settings.amp_dtype, progress=settings.progress,
                    desc=desc)


def measure(item: Item, label: str, model: nn.Module, state: dict, val_loader, calib_loader,
            settings: SweepSettings, device: torch.device, evaluated: nn.Module | None = None) -> dict:
    """The numbers of one item (accuracies in percent); `model` gets `state` loaded first.
    `evaluated`: what runs the evaluations (e.g. `model` compiled; it shares the parameters, so
    loading, pruning and batch-norm tuning on the plain `model` reach it without recompiling)."""
    model.load_state_dict(state)
    evaluated = model if evaluated is None else evaluated
    point = item.target
    t0 = time.perf_counter()
    if point is None:
        dense = _eval(evaluated, val_loader, settings, f"{label}: dense")
        return {"top1": dense["top1"], "top5": dense["top5"], "loss": dense["loss"],
                "time_dense_eval_s": time.perf_counter() - t0}
    masks, report = prune_model(model, point.method, point.sparsity, point.nm)
    t1 = time.perf_counter()
    pruned = _eval(evaluated, val_loader, settings, f"{label} {point.name}: pruned")
    t2 = time.perf_counter()
    tuned, t3 = None, t2
    if settings.bnt_batches:
        calib_loader.set_epoch(0)  # every point is tuned on the same calibration batches,
        torch.manual_seed(settings.bnt_seed)  # and a model's own randomness (dropout) replays
        tune_batchnorm(model, calib_loader, settings.bnt_batches, settings.bnt_momentum,
                       device=device, channels_last=settings.channels_last,
                       autocast_dtype=settings.amp_dtype, progress=settings.progress)
        t3 = time.perf_counter()
        tuned = _eval(evaluated, val_loader, settings, f"{label} {point.name}: pruned + BNT")
    t4 = time.perf_counter()
    if settings.save_pruned_dir:
        os.makedirs(settings.save_pruned_dir, exist_ok=True)
        torch_save({"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "masks": {k: v.cpu() for k, v in masks.items()}, "label": label,
                    "method": point.method, "sparsity": point.sparsity, "pattern": point.pattern,
                    "bnt": bool(settings.bnt_batches)},
                   os.path.join(settings.save_pruned_dir, f"{label}_{point.name}.pt"))
    return {
        "pruned_top1": pruned["top1"], "pruned_top5": pruned["top5"], "pruned_loss": pruned["loss"],
        **{f"bnt_{k}": tuned[k] if tuned else None for k in ("top1", "top5", "loss")},
        "achieved_sparsity": report.pruned_sparsity, "prunable_sparsity": report.prunable_sparsity,
        "model_sparsity": report.model_sparsity, "dense_layers": report.dense_layers,
        "time_prune_s": t1 - t0, "time_pruned_eval_s": t2 - t1,
        "time_bnt_s": t3 - t2 if tuned else None, "time_bnt_eval_s": t4 - t3 if tuned else None,
    }


def rows_of(items: list[Item], results: list[dict], labels: list[str],
            checkpoints: list[str]) -> list[dict]:
    """One row per point, checkpoint by checkpoint, in the order of `items`, with the dense
    accuracy of its checkpoint."""
    dense = {item.checkpoint: result for item, result in zip(items, results) if item.target is None}
    rows = []
    for item, result in zip(items, results):
        point, c = item.target, item.checkpoint
        if point is None:
            continue
        rows.append({
            "label": labels[c], "checkpoint": checkpoints[c], "method": point.method,
            "sparsity": point.sparsity, "pattern": point.pattern,
            "dense_top1": dense[c]["top1"], "dense_top5": dense[c]["top5"],
            "dense_loss": dense[c]["loss"],
            **{k: v for k, v in result.items() if not k.startswith("time_")},
            "time_dense_eval_s": dense[c]["time_dense_eval_s"],
            **{k: v for k, v in result.items() if k.startswith("time_")},
        })
    return rows


def sweep_checkpoint(label: str, checkpoint: str, model: nn.Module, state: dict, val_loader,
                     calib_loader, points: list[Target], settings: SweepSettings,
                     device: torch.device) -> list[dict]:
    """Rows of results for one checkpoint in this process, in the order of `points`."""
    items = work_items(1, points)
    results = [measure(item, label, model, state, val_loader, calib_loader, settings, device)
               for item in items]
    return rows_of(items, results, [label], [checkpoint])
