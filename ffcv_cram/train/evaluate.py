"""Top-1 / top-5 accuracy and loss over a loader, summed over all ranks."""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from tqdm.auto import tqdm

from .dist import Context, all_sum


@torch.no_grad()
def evaluate(model: nn.Module, loader, ctx: Context | None = None,
             amp_dtype: torch.dtype | None = None, flip_tta: bool = False,
             progress: bool = False, desc: str = "eval") -> dict:
    """Accuracy in percent. With `flip_tta`, logits are averaged with the horizontally flipped
    image's. Every sample counts once, whichever rank saw it."""
    ctx = ctx or Context()
    was_training = model.training
    model.eval()
    device_type = next(model.parameters()).device.type
    autocast = (torch.autocast(device_type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    totals = None  # top1, top5, loss sum, samples: accumulated on the device, one sync at the end
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not (progress and ctx.is_main)):
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
                                                         reduction="sum").double(),
                             torch.tensor(len(y), dtype=torch.float64, device=logits.device)])
        totals = batch if totals is None else totals + batch
    local = totals.tolist() if totals is not None else [0.0, 0.0, 0.0, 0.0]
    top1, top5, loss, n = all_sum(local, ctx)
    model.train(was_training)
    n = max(n, 1)
    return {"top1": 100 * top1 / n, "top5": 100 * top5 / n, "loss": loss / n, "samples": int(n)}
