"""Crop, resize, flip and normalise a batch of decoded images of different sizes, in torch.

Device-agnostic: the same code runs on CUDA tensors in training and on CPU tensors in tests.

Crop boxes: the training crops and flips come from `seeded_crops` (FFCV's RandomResizedCrop
sampling, keyed by (seed, epoch, sample index), shared with the CPU decoder); `center_crops` is
the validation crop (a centred square of `ratio` x the short side), exactly FFCV's.

Resampling is anti-aliased bilinear (the filter of torchvision's RandomResizedCrop and of
`F.interpolate(..., antialias=True)`), written as two matrix products per batch: with R (rows)
and C (columns) the per-image filter matrices, out = R @ crop @ C^T, all images in one padded
batch. A few large kernels instead of several small ones per image; a horizontal flip is a
reversal of C's rows, so it costs nothing.

Padding every crop to the largest one of the batch costs N x max_h x max_w fp32 pixels: with
full-size images (a .beton written with max_resolution=0) and 512 crops that is tens of GB.
So the crops go through in chunks of similar sizes (sorted by area), each chunk as large as a
byte budget allows (`crop_chunks`); a crop larger than the budget goes alone. The working
memory of one call is then at most max(budget, one crop's own cost) beyond the output.
"""
from __future__ import annotations

import numpy as np
import torch

# default working-memory budget of one resized_crops call: a batch of 512 ImageNet-like crops
# (stored at <= 500 px) fits in one group -- on an H200, four groups of 512 MiB cost 14 % more time
# -- while a batch of full-size photos stays near 3 GiB instead of ~25 GiB
WORK_BYTES = 3 * 2**30


def center_crops(heights, widths, ratio: float) -> np.ndarray:
    """(N, 4) boxes of FFCV's validation crop: a centred square of int(ratio * short side)."""
    heights = np.asarray(heights, dtype=np.int64)
    widths = np.asarray(widths, dtype=np.int64)
    side = (ratio * np.minimum(heights, widths)).astype(np.int64)
    return np.stack([(heights - side) // 2, (widths - side) // 2, side, side], 1)


def resize_weights(in_sizes: torch.Tensor, out_size: int, span: int,
                   flip: torch.Tensor | None = None) -> torch.Tensor:
    """(N, out_size, span) float32 matrices that resample a length in_sizes[n] signal to out_size.

    Anti-aliased bilinear (a triangle filter widened by the scale when shrinking, weights
    normalised per output), so out = W[n] @ signal matches `F.interpolate(mode='bilinear',
    antialias=True, align_corners=False)`. Columns at or beyond in_sizes[n] get weight 0 (padding).
    Where `flip[n]`, the output order is reversed. Computed in float64, in place: one float64
    (N, out_size, span) array of scratch.
    """
    sizes = in_sizes.to(torch.float64).view(-1, 1, 1)
    scale = sizes / out_size
    support = scale.clamp(min=1.0)  # the filter's half-width in input pixels
    out = torch.arange(out_size, dtype=torch.float64, device=in_sizes.device).view(1, -1, 1)
    if flip is not None:
        out = torch.where(flip.view(-1, 1, 1), out_size - 1 - out, out)
    centre = scale * (out + 0.5)
    source = torch.arange(span, dtype=torch.float64, device=in_sizes.device).view(1, 1, -1)
    weights = source + 0.5 - centre
    weights.div_(support).abs_().neg_().add_(1).clamp_(min=0)  # 1 - |distance| / support, >= 0
    weights.mul_(source < sizes)
    return weights.div_(weights.sum(-1, keepdim=True)).to(torch.float32)


def chunk_bytes(count: int, rows: int, cols: int, size: int) -> int:
    """Bytes that `resized_crops` allocates for `count` crops padded to rows x cols: the padded
    fp32 crops, the row pass, the chunk's output, the fp32 filters and the float64 scratch."""
    pixels = 3 * rows * cols + 3 * size * cols + 3 * size * size
    filters = size * (rows + cols) + 2 * size * max(rows, cols)  # float64 scratch: 2 units
    return 4 * count * (pixels + filters)


def crop_chunks(heights, widths, size: int, max_bytes: int = WORK_BYTES) -> list[np.ndarray]:
    """Indices of the crops, in chunks of similar sizes whose `chunk_bytes` fit `max_bytes`.

    Largest areas first; a chunk grows while the padded cost of all its crops still fits, and a
    crop that alone exceeds the budget makes a chunk of its own."""
    heights = np.asarray(heights, dtype=np.int64)
    widths = np.asarray(widths, dtype=np.int64)
    order = np.argsort(-(heights * widths), kind="stable")
    chunks, start, rows, cols = [], 0, 0, 0
    for i, k in enumerate(order):
        grown_rows, grown_cols = max(rows, int(heights[k])), max(cols, int(widths[k]))
        if i > start and chunk_bytes(i + 1 - start, grown_rows, grown_cols, size) > max_bytes:
            chunks.append(order[start:i])
            start, grown_rows, grown_cols = i, int(heights[k]), int(widths[k])
        rows, cols = grown_rows, grown_cols
    if len(order):
        chunks.append(order[start:])
    return chunks


def resized_crops(images: list[torch.Tensor], boxes: np.ndarray, size: int,
                  flips: np.ndarray | None = None, max_bytes: int = WORK_BYTES) -> torch.Tensor:
    """Crop box k of (3, H, W) uint8 image k, resize it to size x size, flip where flips[k].

    Returns float32 (N, 3, size, size) pixel values in [0, 255], on the images' device. Works
    through the crops in chunks (`crop_chunks`) so that the working memory beyond the output
    stays within `max_bytes`, or within one crop's own cost where that is larger.
    """
    boxes = np.asarray(boxes)
    flips = None if flips is None else np.asarray(flips)
    chunks = crop_chunks(boxes[:, 2], boxes[:, 3], size, max_bytes)
    if len(chunks) == 1:  # all at once, in the batch's order
        return _resize_padded(images, boxes, size, flips).permute(0, 2, 1, 3)
    device = images[0].device
    # rows x (channel, column) layout, as each chunk's result
    out = torch.empty(len(images), size, 3, size, dtype=torch.float32, device=device)
    for chunk in chunks:
        pixels = _resize_padded([images[k] for k in chunk], boxes[chunk], size,
                                None if flips is None else flips[chunk])
        out.index_copy_(0, torch.as_tensor(chunk, device=device), pixels)
        del pixels
    return out.permute(0, 2, 1, 3)


def _resize_padded(images, boxes: np.ndarray, size: int, flips) -> torch.Tensor:
    """(n, size, 3, size) float32: the crops of one chunk, padded to its largest, resampled."""
    device = images[0].device
    heights, widths = boxes[:, 2], boxes[:, 3]
    rows_max, cols_max = int(heights.max()), int(widths.max())
    # rows x (channel, column) layout: one batched matmul per direction, no per-channel split
    batch = torch.zeros(len(images), rows_max, 3, cols_max, dtype=torch.float32, device=device)
    for k, (image, (top, left, h, w)) in enumerate(zip(images, boxes.tolist())):
        batch[k, :h, :, :w] = image[:, top:top + h, left:left + w].permute(1, 0, 2)
    to_device = {"device": device, "dtype": torch.int64}
    row_weights = resize_weights(torch.as_tensor(heights, **to_device), size, rows_max)
    col_weights = resize_weights(torch.as_tensor(widths, **to_device), size, cols_max,
                                 None if flips is None else torch.as_tensor(flips, device=device))
    tall = torch.bmm(row_weights, batch.view(len(images), rows_max, 3 * cols_max))
    del batch
    out = torch.bmm(tall.view(len(images), size * 3, cols_max), col_weights.transpose(1, 2))
    return out.view(len(images), size, 3, size)


def normalize(images: torch.Tensor, mean, std, dtype: torch.dtype,
              channels_last: bool = True) -> torch.Tensor:
    """(x - mean) / std per channel, as `dtype`, channels_last (or contiguous)."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return ((images - mean) / std).to(dtype=dtype, memory_format=layout)
