"""A generated image-classification dataset: shapes on textured backgrounds, as JPEG class folders.

The class is the shape. Everything else is a nuisance drawn at random per image: position, scale,
rotation (within +-25 degrees, so bars and arrows keep their direction), the shape's colour, the
background (gradient, stripes or colour blobs), pixel noise and JPEG quality. Colour carries no
class information, so a model has to learn structure. Seeded: the same arguments give the same
bytes.

    python -m ffcv_cram.data.synthetic --out data/shapes --classes 10 --train-per-class 500 \\
        --val-per-class 100 --size 32
"""
from __future__ import annotations

import argparse
import io
import math
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def _circle(r=0.8, n=48):
    return [(r * math.cos(2 * math.pi * i / n), r * math.sin(2 * math.pi * i / n)) for i in range(n)]


def _rect(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _star(points=5, outer=0.85, inner=0.38):
    return [((outer if i % 2 == 0 else inner) * math.cos(math.pi * i / points - math.pi / 2),
             (outer if i % 2 == 0 else inner) * math.sin(math.pi * i / points - math.pi / 2))
            for i in range(2 * points)]


# each shape: (polygons filled in order; a polygon with False as first element is cut out)
SHAPES: dict[str, list] = {
    "circle": [_circle()],
    "square": [_rect(-0.7, -0.7, 0.7, 0.7)],
    "triangle": [[(0.0, -0.8), (0.8, 0.6), (-0.8, 0.6)]],
    "cross": [_rect(-0.8, -0.22, 0.8, 0.22), _rect(-0.22, -0.8, 0.22, 0.8)],
    "ring": [_circle(0.85), [False] + _circle(0.5)],
    "diamond": [[(0.0, -0.9), (0.5, 0.0), (0.0, 0.9), (-0.5, 0.0)]],
    "star": [_star()],
    "horizontal_bars": [_rect(-0.8, y, 0.8, y + 0.3) for y in (-0.8, -0.15, 0.5)],
    "vertical_bars": [_rect(x, -0.8, x + 0.3, 0.8) for x in (-0.8, -0.15, 0.5)],
    "arrow": [[(-0.8, -0.2), (0.2, -0.2), (0.2, -0.6), (0.85, 0.0), (0.2, 0.6), (0.2, 0.2),
               (-0.8, 0.2)]],
    "hexagon": [_circle(0.8, 6)],
    "l_shape": [_rect(-0.6, -0.8, -0.15, 0.8), _rect(-0.6, 0.35, 0.7, 0.8)],
}
SUPERSAMPLE = 4


def _luminance(rgb) -> float:
    return float(np.dot(rgb, [0.299, 0.587, 0.114]))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    kind = rng.integers(3)
    if kind == 0:  # linear gradient in a random direction
        angle = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(angle) + yy * math.sin(angle))
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    elif kind == 1:  # soft stripes, weaker than a shape's edges
        angle, freq, phase = rng.uniform(0, math.pi), rng.uniform(1.5, 4.0), rng.uniform(0, 6.3)
        t = 0.5 + 0.25 * np.sin(2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle)) + phase)
    else:  # colour blobs: a coarse random grid, smoothly upsampled
        grid = Image.fromarray(rng.uniform(0, 255, (3, 3, 3)).astype(np.uint8))
        return np.asarray(grid.resize((size, size), Image.BICUBIC), dtype=np.float64)
    return c1 + (c2 - c1) * t[..., None]


def _shape_mask(rng: np.random.Generator, shape: str, size: int) -> np.ndarray:
    big = size * SUPERSAMPLE
    scale = rng.uniform(0.28, 0.45) * big
    cx, cy = rng.uniform(0.3, 0.7, 2) * big
    angle = math.radians(rng.uniform(-25, 25))
    cos, sin = math.cos(angle), math.sin(angle)
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    for polygon in SHAPES[shape]:
        fill = 255
        if polygon and polygon[0] is False:
            fill, polygon = 0, polygon[1:]
        points = [(cx + scale * (x * cos - y * sin), cy + scale * (x * sin + y * cos)) for x, y in polygon]
        draw.polygon(points, fill=fill)
    return np.asarray(mask.resize((size, size), Image.BOX), dtype=np.float64)[..., None] / 255.0


def render(shape: str, size: int, seed_sequence) -> bytes:
    """One JPEG image of `shape`, fully determined by `seed_sequence`."""
    rng = np.random.default_rng(seed_sequence)
    background = _background(rng, size)
    color = rng.uniform(0, 255, 3)
    contrast = _luminance(color) - _luminance(background.reshape(-1, 3).mean(0))
    if abs(contrast) < 60:  # keep the shape visible: push it away from the background's brightness
        color = np.clip(color + (60 - abs(contrast)) * (1 if contrast >= 0 else -1) * 1.5, 0, 255)
    alpha = _shape_mask(rng, shape, size)
    image = background * (1 - alpha) + color * alpha
    image += rng.normal(0, rng.uniform(0, 12), image.shape)
    out = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
        out, format="JPEG", quality=int(rng.integers(80, 96)))
    return out.getvalue()


def _write_class(job) -> int:
    root, split_index, split, class_index, shape, count, size, seed = job
    folder = Path(root) / split / shape
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        data = render(shape, size, [seed, split_index, class_index, i])
        (folder / f"{shape}_{i:05d}.jpg").write_bytes(data)
    return count


def generate(out_dir, classes: int = 10, train_per_class: int = 500, val_per_class: int = 100,
             size: int = 32, seed: int = 0, workers: int | None = None,
             overwrite: bool = False) -> dict:
    """Write `out_dir/train/<shape>/*.jpg` and `out_dir/val/<shape>/*.jpg` atomically."""
    if not 2 <= classes <= len(SHAPES):
        raise ValueError(f"classes={classes}: must be between 2 and {len(SHAPES)}")
    if size < 8:
        raise ValueError(f"size={size}: must be at least 8 pixels")
    if train_per_class < 1 or val_per_class < 0:
        raise ValueError("train_per_class must be >= 1 and val_per_class >= 0")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; pass overwrite=True (--overwrite) to replace it")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shapes = list(SHAPES)[:classes]
    jobs = [(str(partial), s_ix, split, c_ix, shape, count, size, seed)
            for s_ix, (split, count) in enumerate([("train", train_per_class), ("val", val_per_class)])
            for c_ix, shape in enumerate(shapes) if count]
    start = time.perf_counter()
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            total = sum(pool.map(_write_class, jobs))
    else:
        total = sum(map(_write_class, jobs))
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    return {"path": str(out), "classes": shapes, "images": total, "size": size,
            "seconds": time.perf_counter() - start}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Generate a shapes dataset as class-per-folder JPEGs.")
    parser.add_argument("--out", required=True, help="output folder (gets train/ and val/)")
    parser.add_argument("--classes", type=int, default=10, help=f"number of classes, 2..{len(SHAPES)}")
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    args = parser.parse_args(argv)
    try:
        info = generate(args.out, args.classes, args.train_per_class, args.val_per_class, args.size,
                        args.seed, args.workers or None, args.overwrite)
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {info['images']} images ({len(info['classes'])} classes, {info['size']} px) "
          f"to {info['path']} in {info['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
