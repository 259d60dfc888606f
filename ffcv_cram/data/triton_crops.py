"""Crop, resize, flip, normalise and cast a batch of decoded images in one Triton launch.

The resampling is that of `gpu_augment.resized_crops` (anti-aliased bilinear, align_corners=False,
weights normalised per output, nothing read past the crop), followed by `gpu_augment.normalize`;
those two stay the reference (`crops_reference`) and the fallback where the kernel cannot run.

Why one kernel: the reference pads every crop of a batch to the largest in fp32, builds float64
filter matrices, makes two batched matmuls and a normalising pass: ~5 ms of an H200 per batch of
256, taken from the model. The work itself is small. An ImageNet-like crop (~320 px) resized to
176 px has a scale of ~1.8, so ceil(2 x 1.8) = 4 source taps per dimension; averaged over
RandomResizedCrop's scales, ~13 tap pairs per output pixel, each one byte per channel: ~300 M byte
gathers per batch (256 x 176^2 pixels x 3 channels), served by L1 (a tile's source window is a
few KB). DRAM sees each crop's bytes about once (~80 MB) and the output once (~48 MB in bf16),
~30 us at H200 bandwidth. The compiled inner loop spends ~5.5 instructions per gathered byte:
~50 M warp instructions, ~50 us at the full issue rate of 132 SMs, so ~0.1-0.2 ms per batch
expected, against ~5 ms for the reference.

Where the cost goes, and why it is shaped so:
- One program per (image, 16 x 32 output tile), found from a 1-D grid. The image's table row gives
  its address, strides and box, so images of any size and layout (CHW planes from torchvision,
  HWC from nvImageCodec) go in one launch, with no padding, no copies and no per-image launches.
  The tap counts are per-image runtime loop bounds.
- A warp covers 32 neighbouring output columns of one row: each gather reads a run of
  ~32 x scale bytes (CHW) or 3 x that (HWC), one or two L1 lines; the other channels of the same
  pixels follow at a fixed offset. 4 rows per thread keep 12 loads in flight per tap.
- Exact integer weights. With M = max(L, S) for a crop of L pixels and S outputs, tap x of output
  o weighs 2M - |2S x + S - L (2o + 1)| (0 when negative): the reference's weight times 2M, which
  the normalisation cancels. The first tap is an integer division, the count ceil(2M / S). So no
  float64 and no rounded centres (a float32 centre is ~1e-4 px off on a 2000 px crop). The
  horizontal pass sums weight x byte in int32, exactly: one integer multiply-add per gathered
  byte, no conversion to float. The vertical pass (row weight x row sum) and the normalisation run
  in float32: one conversion per row tap, one correctly rounded reciprocal per output. If a huge
  crop could overflow int32 (255 x the sum of a row's weights >= 2^31: crops over ~19,000 px at
  176 px out) the column weights drop the low bits needed, an error of 2^bits of a peak weight
  of 2M (~5e-5 of it for a 20,000 px crop).
- channels_last output: the three channel tiles are cast, interleaved in registers (join, then a
  warp-local gather) and written as contiguous (r, g, b) runs: 16-byte vector stores where
  3 x size is a multiple of 16 (size 160, 176, 192, 224, ...). Other layouts store per channel.
- fp contraction (`enable_fp_fusion`) stays on, Triton's default: the only float arithmetic is the
  vertical pass and the normalisation, where an FMA removes a rounding.

Accuracy: max |kernel - reference| in float32 on the 0-255 scale is ~6e-5 (each within ~4e-5 of
float64): the reference's own fp32 rounding. The bound tests/test_triton_crops.py holds it to.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .gpu_augment import normalize, resized_crops

try:  # the reference path and the table work without triton
    import triton
    import triton.language as tl
except Exception:  # missing or broken
    triton = None

# int64 per image: address, chan_stride, row_stride, col_stride, top, left, height, width, flip, 0
TABLE_COLUMNS = 10
BLOCK_ROWS = 16  # output rows per program
BLOCK_COLS = 32  # output columns per program: one warp's row; 160/192/224 are multiples
NUM_WARPS = 4
# the row pass accumulates (weight x byte) in int32: the sum of weights must stay below this
INT_LIMIT = (2**31 - 1) // 255
# int32 offsets inside an image, with room for the taps past a crop (read clamped to its edge)
_MAX_IMAGE_BYTES = 2**29


def kernel_usable(device: torch.device) -> bool:
    """True on CUDA (triton importable); on the CPU only when TRITON_INTERPRET=1 is set (tests)."""
    device = torch.device(device)
    if triton is None:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1"


def fill_table(table: torch.Tensor, images: list[torch.Tensor], boxes, flips) -> None:
    """Write the per-image rows of `crop_resize_normalize` into `table` ((N, TABLE_COLUMNS) CPU
    int64, e.g. a view into a pinned buffer): image k's data_ptr (address of element [0, 0, 0])
    and (channel, row, column) strides in elements, box k (top, left, height, width), flips[k].

    images[k]: uint8 (3, H, W) with any strides (CHW, or HWC viewed as .permute(2, 0, 1)).
    Raises ValueError naming the image where a box leaves its image or an image is not uint8."""
    count = len(images)
    if table.dtype != torch.int64 or table.device.type != "cpu" or tuple(table.shape) != (
            count, TABLE_COLUMNS):
        raise ValueError(f"table must be a CPU int64 tensor of shape ({count}, {TABLE_COLUMNS}), "
                         f"got {table.dtype} {tuple(table.shape)} on {table.device}")
    if count == 0:
        return
    # one pass of Python over the images (~1 us each); the rest is numpy on whole columns
    facts = np.array([(t.data_ptr(), *t.stride(), *t.shape, t.dtype == torch.uint8)
                      if t.dim() == 3 else (0,) * 8 for t in images], dtype=np.int64)
    boxes = np.asarray(boxes, dtype=np.int64).reshape(count, 4)
    top, left, height, width = boxes.T
    bad = ((facts[:, 4] != 3) | (facts[:, 7] == 0) | (top < 0) | (left < 0)
           | (height < 1) | (width < 1) | (top + height > facts[:, 5])
           | (left + width > facts[:, 6]))
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        image = images[k]
        raise ValueError(f"image {k}: {image.dtype} {tuple(image.shape)} with crop box "
                         f"(top, left, height, width) {tuple(boxes[k].tolist())}: the images must "
                         "be uint8 (3, H, W) and each box inside its image, at least 1 x 1")
    span = (facts[:, 5] - 1) * facts[:, 2] + (facts[:, 6] - 1) * facts[:, 3] + 2 * facts[:, 1]
    if (span >= _MAX_IMAGE_BYTES).any() or (facts[:, 1:4] < 0).any():
        k = int(np.flatnonzero((span >= _MAX_IMAGE_BYTES) | (facts[:, 1:4] < 0).any(1))[0])
        raise ValueError(f"image {k}: {tuple(images[k].shape)} with strides "
                         f"{tuple(images[k].stride())} spans {_MAX_IMAGE_BYTES >> 20} MiB or more; "
                         "the kernel addresses an image with 32-bit offsets")
    rows = table.numpy()
    rows[:, 0:4] = facts[:, 0:4]
    rows[:, 4:8] = boxes
    rows[:, 8] = 0 if flips is None else np.asarray(flips, dtype=np.bool_).reshape(count)
    rows[:, 9] = 0


def crop_resize_normalize(table_on_device: torch.Tensor, count: int, size: int,
                          mean: torch.Tensor, std: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[n] = normalise(resize(crop(image n))), flipped horizontally where the row's flip is set.

    table_on_device: int64 (>= count, TABLE_COLUMNS) from `fill_table`, on the images' device;
    mean, std: float32 (3,) on that device, pixel scale 0-255; out: (count, 3, size, size) float32,
    float16 or bfloat16, channels_last or any other strides. One launch on the current stream,
    no host synchronisation, no allocation. Returns out."""
    return _launch(table_on_device, count, size, mean, std, out, INT_LIMIT)


def _launch(table, count, size, mean, std, out, int_limit):
    if tuple(out.shape) != (count, 3, size, size):
        raise ValueError(f"out has shape {tuple(out.shape)}, expected ({count}, 3, {size}, {size})")
    if out.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"out must be float32, float16 or bfloat16, got {out.dtype}")
    if table.dtype != torch.int64 or table.dim() != 2 or table.shape[0] < count or \
            table.shape[1] != TABLE_COLUMNS or table.stride() != (TABLE_COLUMNS, 1):
        raise ValueError(f"the table must be int64 (>= {count}, {TABLE_COLUMNS}) with contiguous "
                         f"rows, got {table.dtype} {tuple(table.shape)} strides {table.stride()}")
    for name, t in (("mean", mean), ("std", std)):
        if t.dtype != torch.float32 or t.numel() != 3 or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous float32 tensor of 3 values, got "
                             f"{t.dtype} {tuple(t.shape)}")
    devices = {t.device for t in (table, mean, std, out)}
    if len(devices) != 1:
        raise ValueError(f"table, mean, std and out must be on one device, got {devices}")
    if count == 0:
        return out
    sn, sc, sh, sw = out.stride()
    channels_last = sc == 1 and sw == 3 and sh == 3 * size
    tiles_y = triton.cdiv(size, BLOCK_ROWS)
    tiles_x = triton.cdiv(size, BLOCK_COLS)
    _crop_resize_normalize[(count * tiles_y * tiles_x,)](
        table, mean, std, out, size, 3 * size, tiles_x, tiles_y * tiles_x, sn, sc, sh, sw,
        INT_LIMIT=int_limit, ROWS=BLOCK_ROWS, COLS=BLOCK_COLS, CHANNELS_LAST=channels_last,
        ROUND_BF16=out.dtype == torch.bfloat16, num_warps=NUM_WARPS)
    return out


def crops_reference(images, boxes, flips, size, mean, std, dtype,
                    channels_last: bool = True) -> torch.Tensor:
    """The same output with `gpu_augment.resized_crops` + `normalize` (padded fp32 matmuls): the
    reference of the kernel, and the fallback where `kernel_usable` is False."""
    pixels = resized_crops(images, boxes, size, flips)
    return normalize(pixels, mean, std, dtype, channels_last)


if triton is not None:
    @triton.jit
    def _first_taps(o, crop, size):
        """(first tap, its distance d, 2 max(L, S), tap count) of outputs o along one dimension.

        Output o is centred at L (2o + 1) / 2S in a crop of L pixels; the triangle's half-width
        is M / S with M = max(L, S). In units of 1 / 2S, tap x lies d = 2S x + S - L (2o + 1) from
        the centre and weighs 2M - |d| (> 0 inside the triangle): the weights of the reference
        times 2M, which the normalisation cancels. The taps with weight > 0 start at
        floor((L (2o + 1) + S - 2M) / 2S), at most ceil(2M / S) of them; below 0 there is
        nothing to read, so the first is clamped to 0 (a truncating division lands there too)."""
        centre2 = crop * (2 * o + 1)
        width2 = 2 * tl.maximum(crop, size)
        first = tl.maximum((centre2 + size - width2) // (2 * size), 0)
        taps = (width2 + size - 1) // size
        return first, 2 * size * first + size - centre2, width2, taps

    @triton.jit
    def _weight(x, d, width2, crop):
        """Integer triangle weight of tap x at distance d; 0 past the crop."""
        return tl.where(x < crop, tl.maximum(width2 - tl.abs(d), 0), 0)

    @triton.jit
    def _cast(value, dtype: tl.constexpr, ROUND_BF16: tl.constexpr):
        """value as the output's dtype, rounded to nearest even like torch's cast. For bfloat16 by
        hand (three integer operations, on registers): the GPU's conversion rounds so, Triton's
        interpreter truncates, and the tests compare the two paths bit for bit."""
        if ROUND_BF16:
            bits = value.to(tl.uint32, bitcast=True)
            bits = bits + (0x7FFF + ((bits >> 16) & 1))
            return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        return value.to(dtype)

    @triton.jit
    def _normalise(acc, scale, mean, std):
        """(acc x scale - mean) / std, the division as a product with the reciprocal of std."""
        return (acc * scale - tl.load(mean)) * tl.math.div_rn(1.0, tl.load(std))

    # out_sw unspecialised: a contiguous output (stride 1) would otherwise get vectorised stores
    # and, with them, a layout whose warps span 4 rows x 8 columns, poor for the gathers
    @triton.jit(do_not_specialize=["out_sw"])
    def _crop_resize_normalize(table, mean, std, out, size, row_elements, tiles_x, tiles,
                               out_sn, out_sc, out_sh, out_sw, INT_LIMIT: tl.constexpr,
                               ROWS: tl.constexpr, COLS: tl.constexpr,
                               CHANNELS_LAST: tl.constexpr, ROUND_BF16: tl.constexpr):
        pid = tl.program_id(0)
        n = pid // tiles
        tile = pid % tiles
        entry = table + n * 10  # this image's row of the table
        src = tl.load(entry).to(tl.pointer_type(tl.uint8))
        cs = tl.load(entry + 1).to(tl.int32)
        rs = tl.load(entry + 2).to(tl.int32)
        xs = tl.load(entry + 3).to(tl.int32)
        top = tl.load(entry + 4).to(tl.int32)
        left = tl.load(entry + 5).to(tl.int32)
        crop_h = tl.load(entry + 6).to(tl.int32)
        crop_w = tl.load(entry + 7).to(tl.int32)
        flip = tl.load(entry + 8) != 0

        # rows as [ROWS, 1] and columns as [1, COLS]: one 2-D layout from the start, so that
        # nothing changes layout inside the tap loops
        oy = (tile // tiles_x) * ROWS + tl.arange(0, ROWS)[:, None]
        ox = (tile % tiles_x) * COLS + tl.arange(0, COLS)[None, :]
        ox_source = tl.where(flip, size - 1 - ox, ox)  # a flip reverses the output columns
        y0, dy0, wy2, taps_y = _first_taps(oy, crop_h, size)
        x0, dx0, wx2, taps_x = _first_taps(ox_source, crop_w, size)
        step = 2 * size  # the distance from one tap to the next
        # the int32 horizontal pass: 255 x (sum of a row's weights <= taps x 2M) must fit, else
        # the column weights drop low bits
        shift = 0
        bound = taps_x.to(tl.int64) * wx2
        while bound > INT_LIMIT:
            bound = bound >> 1
            shift += 1

        sum_y = tl.zeros([ROWS, 1], tl.int32)
        for i in range(taps_y):
            sum_y += _weight(y0 + i, dy0 + i * step, wy2, crop_h)
        sum_x = tl.zeros([1, COLS], tl.int32)
        for j in range(taps_x):
            sum_x += _weight(x0 + j, dx0 + j * step, wx2, crop_w) >> shift

        # taps past the crop weigh 0; their reads are clamped to its last row / column
        last_col = (left + crop_w - 1) * xs
        first_col = (left + x0) * xs
        acc0 = tl.zeros([ROWS, COLS], tl.float32)
        acc1 = tl.zeros([ROWS, COLS], tl.float32)
        acc2 = tl.zeros([ROWS, COLS], tl.float32)
        for i in range(taps_y):
            y = y0 + i
            wy = _weight(y, dy0 + i * step, wy2, crop_h).to(tl.float32)
            row = src + (top + tl.minimum(y, crop_h - 1)) * rs
            x = x0
            dx = dx0
            col = first_col
            h0 = tl.zeros([ROWS, COLS], tl.int32)
            h1 = tl.zeros([ROWS, COLS], tl.int32)
            h2 = tl.zeros([ROWS, COLS], tl.int32)
            for _ in range(taps_x):
                wx = _weight(x, dx, wx2, crop_w) >> shift
                pixel = row + tl.minimum(col, last_col)
                h0 += wx * tl.load(pixel).to(tl.int32)
                h1 += wx * tl.load(pixel + cs).to(tl.int32)
                h2 += wx * tl.load(pixel + 2 * cs).to(tl.int32)
                x += 1
                dx += step
                col += xs
            acc0 += wy * h0.to(tl.float32)
            acc1 += wy * h1.to(tl.float32)
            acc2 += wy * h2.to(tl.float32)

        # one correctly rounded reciprocal per output, shared by its channels (a division per
        # value and channel would add ~25 % to the whole kernel on Hopper, for one ulp); outputs
        # past the edge have no weights: 1 keeps their masked lanes finite
        total = tl.maximum(sum_y, 1).to(tl.float32) * tl.maximum(sum_x, 1).to(tl.float32)
        scale = tl.math.div_rn(1.0, total)
        dtype = out.dtype.element_ty
        c0 = _cast(_normalise(acc0, scale, mean, std), dtype, ROUND_BF16)
        c1 = _cast(_normalise(acc1, scale, mean + 1, std + 1), dtype, ROUND_BF16)
        c2 = _cast(_normalise(acc2, scale, mean + 2, std + 2), dtype, ROUND_BF16)

        image_out = out + n.to(tl.int64) * out_sn
        inside_y = oy < size
        if CHANNELS_LAST:
            # interleave the channels in registers: the nested joins flatten to r, b, g, b per
            # column; a gather along the row picks r, g, b runs (3 COLS), stored contiguously
            quad = tl.reshape(tl.join(tl.join(c0, c1), tl.join(c2, c2)), [ROWS, 4 * COLS])
            k = tl.arange(0, 4 * COLS)
            pick = tl.where(k < 3 * COLS, (k // 3) * 4 + (2 * (k % 3)) % 3, 0)
            rgb = tl.gather(quad, tl.broadcast_to(pick[None, :], [ROWS, 4 * COLS]), 1)
            element = (tile % tiles_x) * (3 * COLS) + k  # within the output row
            inside = inside_y & ((k < 3 * COLS) & (element < row_elements))[None, :]
            tl.store(image_out + oy * out_sh + element[None, :], rgb, mask=inside)
        else:
            offset = oy * out_sh + ox * out_sw
            inside = inside_y & (ox < size)
            tl.store(image_out + offset, c0, mask=inside)
            tl.store(image_out + out_sc + offset, c1, mask=inside)
            tl.store(image_out + 2 * out_sc + offset, c2, mask=inside)
