"""Top-1 / top-5 accuracy and loss over a loader, summed over all ranks."""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from ..progress import track
from .dist import Context, all_sum


def unwrapped(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (else `model`)."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


@torch.no_grad()
def evaluate(model: nn.Module, loader, ctx: Context | None = None,
             amp_dtype: torch.dtype | None = None, flip_tta: bool = False,
             progress: bool = False, desc: str = "eval") -> dict:
    """Accuracy in percent. With `flip_tta`, logits are averaged with the horizontally flipped
    image's. Every sample counts once, whichever rank saw it.

    Under DDP each rank evaluates its own shard, which may hold a batch more or fewer than another
    rank's, or none: the model runs unwrapped (a DDP wrapper's forward can broadcast buffers, a
    collective that a rank with fewer batches would not join), and the metrics are reduced by one
    all-reduce at the end. The caller makes the ranks' models equal (`dist.broadcast_buffers`).
    """
    ctx = ctx or Context()
    model = unwrapped(model)
    was_training = model.training
    model.eval()
    device_type = next(model.parameters()).device.type
    autocast = (torch.autocast(device_type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    totals = None  # top1, top5, loss sum: on the device, read once at the end
    samples = 0  # counted on the host: no per-batch transfer
    for x, y in track(loader, desc, enabled=progress and ctx.is_main, unit="batches"):
        y = y.reshape(-1)
        with autocast:
            logits = model(x)
            if flip_tta:
                logits = logits + model(x.flip(3))
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, 1).indices
        hits = top == y.view(-1, 1)
        batch = torch.stack([hits[:, 0].sum().double(), hits.any(1).sum().double(),
                             nn.functional.cross_entropy(logits / (2 if flip_tta else 1), y,
                                                         reduction="sum").double()])
        totals = batch if totals is None else totals + batch
        samples += len(y)
    local = totals.tolist() if totals is not None else [0.0, 0.0, 0.0]
    top1, top5, loss, n = all_sum(local + [float(samples)], ctx)
    model.train(was_training)
    total, n = int(n), max(n, 1)
    return {"top1": 100 * top1 / n, "top5": 100 * top5 / n, "loss": loss / n, "samples": total}
