"""The fused crop kernel (`ffcv_cram.data.triton_crops`) equals the reference path it replaces,
`gpu_augment.resized_crops` + `normalize` (`crops_reference`).

Without a GPU the kernel runs in Triton's CPU interpreter (TRITON_INTERPRET=1, set in conftest.py)
on small images: CHW and HWC-permuted, odd sizes, 1-px and whole-image boxes, upscaling and heavy
downscaling, with and without flips, float32 / bfloat16 / float16 out, channels_last or contiguous.
The CUDA case runs an ImageNet-sized batch; the slow case compiles the kernel for sm_90 and sm_80
without a GPU and checks registers, spills and 16-byte stores.

Tolerance (float32, 0-255 scale, mean 0, std 1): measured on the CPU, max |kernel - reference| is
4.6e-5 over random small cases and 6.1e-5 on 500 x 375 images cropped to 176 px, where each of the
two is within 3.9e-5 of a float64 computation: the reference's own float32 rounding, 2-3 ulps at
255 (the kernel's weights are exact integers). Bound: TOLERANCE. A 16-bit output may differ from
the float32 reference rounded to its type by one ulp of that type (the rounding can land either
side) plus TOLERANCE.
"""
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ffcv_cram.data import triton_crops
from ffcv_cram.data.gpu_augment import center_crops
from ffcv_cram.data.seeded_crops import random_crops_and_flips
from ffcv_cram.data.triton_crops import (TABLE_COLUMNS, crop_resize_normalize, crops_reference,
                                         fill_table, kernel_usable)

TOLERANCE = 1e-4  # 0-255 scale: ~1.6x the largest difference measured (see the docstring)
CUDA_TOLERANCE = 2.5e-4  # cuBLAS may sum the reference in another order than the CPU's sgemm
MANTISSA_BITS = {torch.bfloat16: 8, torch.float16: 11}  # with the implicit bit
REPOSITORY = Path(__file__).resolve().parents[1]
# ImageNet's, on the 0-255 scale (pipelines.IMAGENET_MEAN / STD; not imported: pipelines loads ffcv)
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

interpreted = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" or triton_crops.triton is None,
    reason="Triton interpreter not active")


@pytest.fixture
def unsanitized(monkeypatch):
    """Triton's interpreter checks every int32 add and multiply for overflow, 60 % of its time on
    this kernel: off for the bulk of the cases (the file's interpreter time drops from ~40 s to
    ~15 s on two cores); the extreme boxes keep it on, so the integer index and weight arithmetic
    is checked there (and all cases passed with it on when this was written)."""
    from triton.runtime import interpreter
    builder = getattr(interpreter, "interpreter_builder", None)
    options = getattr(builder, "options", None)
    if options is not None and hasattr(options, "sanitize_overflow"):
        monkeypatch.setattr(builder, "options",
                            dataclasses.replace(options, sanitize_overflow=False))


# -- inputs ------------------------------------------------------------------------------------
def image(rng, height, width, layout):
    """uint8 (3, H, W): 'chw' contiguous, 'hwc' an interleaved image viewed as CHW, 'view' a
    window of a larger CHW image (storage offset, row stride > width)."""
    if layout == "hwc":
        return torch.from_numpy(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).permute(
            2, 0, 1)
    if layout == "view":
        return torch.from_numpy(rng.integers(0, 256, (3, height + 3, width + 5), dtype=np.uint8))[
            :, 2:2 + height, 1:1 + width]
    return torch.from_numpy(rng.integers(0, 256, (3, height, width), dtype=np.uint8))


def random_batch(seed, count, low, high):
    """Images of random sizes and layouts; boxes: RandomResizedCrop (seeded_crops) for most, the
    validation centre crop for some, box 0 the whole image, box 1 a single pixel; random flips."""
    rng = np.random.default_rng(seed)
    heights = rng.integers(low, high + 1, count)
    widths = rng.integers(low, high + 1, count)
    images = [image(rng, h, w, ("chw", "hwc", "view")[k % 3])
              for k, (h, w) in enumerate(zip(heights, widths))]
    boxes, flips = random_crops_and_flips(int(rng.integers(2**62)), int(rng.integers(90)),
                                          np.arange(count), heights, widths)
    centre = center_crops(heights, widths, 224 / 256)
    centre[:, 2:] = np.maximum(centre[:, 2:], 1)  # a 1 px side has an empty 224/256 crop
    use_centre = rng.random(count) < 0.3
    boxes[use_centre] = centre[use_centre]
    boxes[0] = (0, 0, heights[0], widths[0])
    top, left = rng.integers(heights[1]), rng.integers(widths[1])
    boxes[1] = (top, left, 1, 1)
    return images, boxes, flips


def run_kernel(images, boxes, flips, size, mean, std, dtype, channels_last, int_limit=None):
    """The kernel's output, written into a NaN-poisoned buffer with a spare image either side
    (every element of out written, nothing outside it), from a table with spare rows."""
    count = len(images)
    table = torch.full((count + 3, TABLE_COLUMNS), -1, dtype=torch.int64)
    fill_table(table[:count], images, boxes, flips)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    buffer = torch.full((count + 2, 3, size, size), float("nan"), dtype=dtype).contiguous(
        memory_format=layout)
    out = buffer[1:count + 1]
    assert out.is_contiguous(memory_format=layout)
    if int_limit is None:
        assert crop_resize_normalize(table, count, size, mean, std, out) is out
    else:
        triton_crops._launch(table, count, size, mean, std, out, int_limit)
    assert not out.isnan().any(), "output elements left unwritten"
    assert buffer[0].isnan().all() and buffer[-1].isnan().all(), "written outside out"
    return out


def ulp(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One unit in the last place of `dtype` at each of the float32 `values`."""
    _, exponent = torch.frexp(values)
    return torch.ldexp(torch.ones_like(values), exponent - MANTISSA_BITS[dtype])


def assert_matches(got, reference, tolerance):
    """got (any float dtype) against the float32 reference: within tolerance, plus one ulp of
    got's type when that is 16-bit."""
    assert reference.dtype == torch.float32 and got.shape == reference.shape
    difference = (got.float() - reference).abs()
    bound = torch.full_like(reference, tolerance)
    if got.dtype != torch.float32:
        bound += ulp(reference, got.dtype)
    worst = int(torch.argmax(difference - bound))
    assert bool((difference <= bound).all()), (
        f"max |kernel - reference| {float(difference.max()):.3g}; at flat index {worst}: "
        f"{float(got.flatten()[worst])} vs {float(reference.flatten()[worst])}")
    return float(difference.max())


def identity():
    return torch.zeros(3), torch.ones(3)


# -- the kernel against the reference, in the interpreter ---------------------------------------
@interpreted
@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "contiguous"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["float32", "bfloat16", "float16"])
def test_kernel_equals_reference(dtype, channels_last, unsanitized):
    case = [torch.float32, torch.bfloat16, torch.float16].index(dtype) * 2 + channels_last
    images, boxes, flips = random_batch(seed=100 + case, count=8, low=1, high=72)
    size = (7, 40, 33, 18, 24, 37)[case]  # 1-3 tiles of 16 rows, 1-2 of 32 columns
    flips = flips if case % 3 else None
    mean, std = identity()
    got = run_kernel(images, boxes, flips, size, mean, std, dtype, channels_last)
    reference = crops_reference(images, boxes, flips, size, mean, std, torch.float32,
                                channels_last)
    assert_matches(got, reference, TOLERANCE)


@interpreted
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_amp_dtype_out_is_float32_out_cast_bit_for_bit(dtype, unsanitized):
    """The loader asks the kernel for the AMP dtype directly (no float32 batch, no cast pass):
    exactly what the float32 output cast by torch (round to nearest even) would be. ImageNet's
    normalisation, so the values span the range a training batch has."""
    images, boxes, flips = random_batch(seed=31, count=4, low=8, high=40)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)
    wide = run_kernel(images, boxes, flips, 24, mean, std, torch.float32, True)
    narrow = run_kernel(images, boxes, flips, 24, mean, std, dtype, True)
    cast = wide.to(dtype)
    assert narrow.dtype == dtype and (narrow.view(torch.int16) == cast.view(torch.int16)).all()


@interpreted
def test_normalisation_and_flips(unsanitized):
    images, boxes, flips = random_batch(seed=7, count=4, low=20, high=48)
    flips[:] = [True, False, True, True]
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)
    got = run_kernel(images, boxes, flips, 24, mean, std, torch.float32, True)
    reference = crops_reference(images, boxes, flips, 24, mean, std, torch.float32)
    # the 0-255 tolerance scaled by 1 / std, plus the rounding of (x - mean) / std
    assert_matches(got, reference, TOLERANCE / min(IMAGENET_STD) + 1e-6)
    unflipped = crops_reference(images, boxes, None, 24, mean, std, torch.float32)
    assert (got[0] - unflipped[0].flip(-1)).abs().max() < 1e-5  # a flip reverses the columns
    assert (got[0] - unflipped[0]).abs().max() > 0.1  # ... and that is visible


@interpreted
def test_heavy_downscaling(unsanitized):
    """Crops 10-13x the output: 20-26 taps per dimension."""
    rng = np.random.default_rng(11)
    images = [image(rng, 64, 54, "hwc"), image(rng, 70, 90, "chw")]
    boxes = np.array([(0, 0, 64, 54), (3, 7, 50, 60)])
    flips = np.array([False, True])
    mean, std = identity()
    got = run_kernel(images, boxes, flips, 5, mean, std, torch.bfloat16, True)
    reference = crops_reference(images, boxes, flips, 5, mean, std, torch.float32)
    assert_matches(got, reference, TOLERANCE)


@interpreted
def test_extreme_boxes_with_the_overflow_check():
    """1 x 1 images and boxes, 1-3 px crops upscaled 8-17x, a crop at the image's far corner;
    Triton's int32 overflow check stays on (no `unsanitized`)."""
    rng = np.random.default_rng(12)
    images = [image(rng, 1, 1, "chw"), image(rng, 9, 13, "hwc"), image(rng, 2, 3, "view"),
              image(rng, 11, 7, "chw")]
    boxes = np.array([(0, 0, 1, 1), (8, 12, 1, 1), (0, 0, 2, 3), (9, 4, 2, 3)])
    flips = np.array([True, False, True, False])
    mean, std = identity()
    got = run_kernel(images, boxes, flips, 17, mean, std, torch.float32, True)
    reference = crops_reference(images, boxes, flips, 17, mean, std, torch.float32)
    assert_matches(got, reference, TOLERANCE)
    assert (got[0] - images[0].float().view(3, 1, 1)).abs().max() <= TOLERANCE  # one pixel


@interpreted
def test_weights_shifted_to_fit_int32_stay_normalised(unsanitized):
    """Where 255 x (sum of a row's weights) could overflow int32 (huge crops), the kernel drops low
    bits of the column weights. Forced here with a small limit: a constant image stays exactly
    constant (the normalisation uses the shifted weights), a random one stays near the reference."""
    rng = np.random.default_rng(13)
    flat = torch.full((3, 60, 50), 77, dtype=torch.uint8)
    images = [flat, image(rng, 60, 50, "hwc")]
    boxes = np.array([(0, 0, 60, 50), (0, 0, 60, 50)])
    mean, std = identity()
    # 50 px -> 8: 13 taps of weight <= 100, sum <= 1300: a limit of 300 drops 3 bits
    got = run_kernel(images, boxes, None, 8, mean, std, torch.float32, True, int_limit=300)
    assert (got[0] - 77).abs().max() <= 1e-4
    reference = crops_reference(images, boxes, None, 8, mean, std, torch.float32)
    difference = float((got[1] - reference[1]).abs().max())
    assert TOLERANCE < difference < 2.0  # 4-bit weights: visibly shifted, still a resampling


# -- the table ---------------------------------------------------------------------------------
def test_fill_table_rows_hold_addresses_strides_boxes_and_flips():
    chw = torch.zeros(3, 5, 7, dtype=torch.uint8)
    hwc = torch.zeros(4, 6, 3, dtype=torch.uint8).permute(2, 0, 1)
    window = torch.zeros(3, 10, 12, dtype=torch.uint8)[:, 2:9, 3:11]
    images = [chw, hwc, window]
    boxes = np.array([(0, 0, 5, 7), (1, 2, 3, 4), (6, 7, 1, 1)])
    table = torch.full((3, TABLE_COLUMNS), -1, dtype=torch.int64)
    fill_table(table, images, boxes, np.array([True, False, True]))
    expected = [
        [chw.data_ptr(), 35, 7, 1, 0, 0, 5, 7, 1, 0],
        [hwc.data_ptr(), 1, 18, 3, 1, 2, 3, 4, 0, 0],
        [window.data_ptr(), 120, 12, 1, 6, 7, 1, 1, 1, 0],
    ]
    assert table.tolist() == expected
    assert window.data_ptr() == window.untyped_storage().data_ptr() + 2 * 12 + 3
    fill_table(table, images, boxes.tolist(), None)  # lists, no flips
    assert table[:, 8].tolist() == [0, 0, 0] and table[:, 4:8].tolist() == boxes.tolist()


@pytest.mark.parametrize("images, box, message", [
    ([torch.zeros(3, 5, 7, dtype=torch.uint8)], (1, 0, 5, 7), "image 0"),  # past the bottom
    ([torch.zeros(3, 5, 7, dtype=torch.uint8)], (0, -1, 2, 2), "image 0"),
    ([torch.zeros(3, 5, 7, dtype=torch.uint8)], (0, 0, 0, 2), "image 0"),  # empty
    ([torch.zeros(3, 5, 7)], (0, 0, 2, 2), "uint8"),
    ([torch.zeros(5, 7, dtype=torch.uint8)], (0, 0, 2, 2), "(3, H, W)"),
    ([torch.zeros(4, 5, 7, dtype=torch.uint8)], (0, 0, 2, 2), "(3, H, W)"),
])
def test_fill_table_refuses_bad_images_and_boxes(images, box, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fill_table(torch.zeros(1, TABLE_COLUMNS, dtype=torch.int64), images, [box], None)
    with pytest.raises(ValueError, match="table"):
        fill_table(torch.zeros(2, TABLE_COLUMNS, dtype=torch.int64), images, [box], None)


def test_fill_table_takes_well_under_a_millisecond_for_256_images():
    rng = np.random.default_rng(0)
    heights, widths = rng.integers(300, 501, 256), rng.integers(300, 501, 256)
    images = [torch.empty(3, h, w, dtype=torch.uint8) if k % 2 else
              torch.empty(h, w, 3, dtype=torch.uint8).permute(2, 0, 1)
              for k, (h, w) in enumerate(zip(heights, widths))]
    boxes, flips = random_crops_and_flips(0, 0, np.arange(256), heights, widths)
    table = torch.empty(256, TABLE_COLUMNS, dtype=torch.int64)
    seconds = []
    for _ in range(7):
        start = time.perf_counter()
        fill_table(table, images, boxes, flips)
        seconds.append(time.perf_counter() - start)
    print(f"fill_table, 256 images: best {min(seconds) * 1e3:.2f} ms")
    assert min(seconds) < 1e-3  # ~0.4 ms on a 2-core CI machine


@pytest.mark.parametrize("change, message", [
    ({"out": torch.empty(2, 3, 8, 9)}, "shape"),
    ({"out": torch.empty(2, 3, 8, 8, dtype=torch.float64)}, "float32, float16 or bfloat16"),
    ({"table_on_device": torch.zeros(1, TABLE_COLUMNS, dtype=torch.int64)}, "table"),
    ({"table_on_device": torch.zeros(TABLE_COLUMNS, 2, dtype=torch.int64).t()}, "contiguous rows"),
    ({"mean": torch.zeros(3, dtype=torch.float64)}, "mean"),
    ({"std": torch.ones(6)[::2]}, "std"),
    ({"std": torch.ones(3, device="meta")}, "one device"),
])
def test_launch_refuses_mismatched_arguments(change, message):
    arguments = {"table_on_device": torch.zeros(2, TABLE_COLUMNS, dtype=torch.int64), "count": 2,
                 "size": 8, "mean": torch.zeros(3), "std": torch.ones(3),
                 "out": torch.empty(2, 3, 8, 8)}
    with pytest.raises(ValueError, match=message):
        crop_resize_normalize(**{**arguments, **change})


def test_kernel_usable_on_cuda_and_in_the_interpreter_only(monkeypatch):
    importable = triton_crops.triton is not None
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not kernel_usable(torch.device("cpu"))
    assert kernel_usable(torch.device("cuda")) == importable
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not kernel_usable(torch.device("cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernel_usable(torch.device("cpu")) == importable
    assert not kernel_usable(torch.device("meta"))
    monkeypatch.setattr(triton_crops, "triton", None)  # triton missing or broken
    assert not kernel_usable(torch.device("cuda")) and not kernel_usable(torch.device("cpu"))


# -- on a GPU ----------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(triton_crops.triton is None, reason="triton cannot be imported")
def test_imagenet_batch_on_the_gpu(monkeypatch):
    """256 images of ~500 x 375 (every third HWC), RandomResizedCrop boxes, 176 px out."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # a float32 reference
    device = torch.device("cuda")
    rng = np.random.default_rng(21)
    long_side = rng.integers(400, 501, 256)
    short_side = (long_side * rng.uniform(0.6, 0.9, 256)).astype(np.int64)
    portrait = rng.random(256) < 0.3
    heights, widths = np.where(portrait, long_side, short_side), np.where(portrait, short_side,
                                                                        long_side)
    images = [image(rng, h, w, "hwc" if k % 3 == 0 else "chw").to(device)
              for k, (h, w) in enumerate(zip(heights, widths))]
    boxes, flips = random_crops_and_flips(3, 1, np.arange(256), heights, widths)
    table = torch.empty(256, TABLE_COLUMNS, dtype=torch.int64).pin_memory()
    fill_table(table, images, boxes, flips)
    table = table.to(device, non_blocking=True)
    for dtype, (mean, std), tolerance in (
            (torch.float32, identity(), CUDA_TOLERANCE),
            (torch.bfloat16, (IMAGENET_MEAN, IMAGENET_STD), CUDA_TOLERANCE / min(IMAGENET_STD))):
        mean = torch.as_tensor(mean, dtype=torch.float32, device=device)
        std = torch.as_tensor(std, dtype=torch.float32, device=device)
        out = torch.full((256, 3, 176, 176), float("nan"), dtype=dtype, device=device).contiguous(
            memory_format=torch.channels_last)
        crop_resize_normalize(table, 256, 176, mean, std, out)
        reference = crops_reference(images, boxes, flips, 176, mean, std, torch.float32)
        print(f"{dtype}: max |kernel - reference| "
              f"{assert_matches(out, reference, tolerance):.3g}")


# -- compiled for Hopper and Ampere without a GPU ----------------------------------------------
def compile_variants(capability: int) -> list[dict]:
    """ptxas numbers of every launch variant (out dtype x layout) for sm_<capability>, through
    `aot_compile`'s interception (compile instead of launch under a stand-in driver). Needs
    TRITON_INTERPRET unset and TRITON_DUMP_PTXAS_LOG=1 before triton loads: run in a subprocess."""
    from ffcv_cram.kernels import aot_compile
    rows = []
    table = torch.zeros(256, TABLE_COLUMNS, dtype=torch.int64)
    with aot_compile._compile_instead_of_launch(capability, rows):
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            for channels_last in (True, False):
                out = torch.empty(256, 3, 176, 176, dtype=dtype)
                if channels_last:
                    out = out.contiguous(memory_format=torch.channels_last)
                before = len(rows)
                crop_resize_normalize(table, 256, 176, torch.zeros(3), torch.ones(3), out)
                for row in rows[before:]:
                    row.update(dtype=str(dtype).split(".")[-1], channels_last=channels_last)
    return rows


@pytest.mark.slow  # ~20 s on two cores
@pytest.mark.skipif(triton_crops.triton is None, reason="triton cannot be imported")
def test_kernel_compiles_for_sm90_and_sm80_without_spills(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_DUMP_PTXAS_LOG="1", TRITON_CACHE_DIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join(p for p in (str(REPOSITORY), env.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, __file__, "90", "80"], env=env, capture_output=True,
                          text=True, timeout=600, cwd=REPOSITORY)
    assert proc.returncode == 0, proc.stderr[-6000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    header = ("arch", "dtype", "channels_last", "registers", "spill_stores", "spill_loads",
              "shared", "st_v4", "st")
    print("\n" + "\n".join("  ".join(str(r[key]) for key in header)
                           for r in [dict(zip(header, header))] + rows))
    assert len(rows) == 12  # 3 dtypes x 2 layouts x 2 targets
    assert all(0 < r["registers"] <= 128 for r in rows)
    assert all(r["spill_stores"] == r["spill_loads"] == 0 for r in rows if r["capability"] == 90)
    # channels_last: the interleaved (r, g, b) runs go out as 16-byte stores only
    assert all(r["st_v4"] > 0 and r["st_v4"] == r["st"] for r in rows if r["channels_last"])


if __name__ == "__main__":  # the slow test's compile step, in a process without the interpreter
    table = [row for capability in sys.argv[1:] for row in compile_variants(int(capability))]
    sys.stdout.flush()
    print(json.dumps(table))
