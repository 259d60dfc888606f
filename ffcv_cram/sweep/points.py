"""One-shot pruning sweeps: for each checkpoint and each target, accuracy dense, after pruning and
after batch-norm tuning, with the achieved sparsity and where the time went."""
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


@dataclass
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


@dataclass
class SweepSettings:
    bnt_batches: int = 100
    bnt_momentum: float | None = 0.1
    amp_dtype: torch.dtype | None = None
    channels_last: bool = True
    save_pruned_dir: str | None = None
    progress: bool = True


def sweep_checkpoint(label: str, checkpoint: str, model: nn.Module, state: dict, val_loader,
                     calib_loader, points: list[Target], settings: SweepSettings,
                     device: torch.device) -> list[dict]:
    """Rows of results (accuracies in percent) for one checkpoint, in the order of `points`."""
    model.load_state_dict(state)
    start = time.perf_counter()
    dense = evaluate(model, val_loader, amp_dtype=settings.amp_dtype, progress=settings.progress,
                     desc=f"{label}: dense")
    dense_s = time.perf_counter() - start
    rows = []
    for point in points:
        model.load_state_dict(state)
        t0 = time.perf_counter()
        masks, report = prune_model(model, point.method, point.sparsity, point.nm)
        t1 = time.perf_counter()
        pruned = evaluate(model, val_loader, amp_dtype=settings.amp_dtype,
                          progress=settings.progress, desc=f"{label} {point.name}: pruned")
        t2 = time.perf_counter()
        calib_loader.set_epoch(0)  # every point is tuned on the same calibration batches
        tune_batchnorm(model, calib_loader, settings.bnt_batches, settings.bnt_momentum,
                       device=device, channels_last=settings.channels_last,
                       autocast_dtype=settings.amp_dtype, progress=settings.progress)
        t3 = time.perf_counter()
        tuned = evaluate(model, val_loader, amp_dtype=settings.amp_dtype,
                         progress=settings.progress, desc=f"{label} {point.name}: pruned + BNT")
        t4 = time.perf_counter()
        if settings.save_pruned_dir:
            os.makedirs(settings.save_pruned_dir, exist_ok=True)
            torch_save({"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                        "masks": {k: v.cpu() for k, v in masks.items()}, "label": label,
                        "method": point.method, "sparsity": point.sparsity, "pattern": point.pattern},
                       os.path.join(settings.save_pruned_dir, f"{label}_{point.name}.pt"))
        rows.append({
            "label": label, "checkpoint": checkpoint, "method": point.method,
            "sparsity": point.sparsity, "pattern": point.pattern,
            "dense_top1": dense["top1"], "dense_top5": dense["top5"],
            "pruned_top1": pruned["top1"], "pruned_top5": pruned["top5"],
            "bnt_top1": tuned["top1"], "bnt_top5": tuned["top5"],
            "achieved_sparsity": report.pruned_sparsity, "prunable_sparsity": report.prunable_sparsity,
            "model_sparsity": report.model_sparsity, "dense_layers": report.dense_layers,
            "time_dense_eval_s": dense_s, "time_prune_s": t1 - t0, "time_pruned_eval_s": t2 - t1,
            "time_bnt_s": t3 - t2, "time_bnt_eval_s": t4 - t3,
        })
    return rows
