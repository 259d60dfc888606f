"""Real image files of every awkward kind, written with PIL (real JPEG/PNG bytes)."""
import io
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def gradient(w, h, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1),
                     (xx + yy) * 127 // max(w + h - 2, 1)], -1)
    return np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)


def save(path, image: Image.Image, fmt=None, **kw):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt, **kw)
    return path


def rgb_jpeg(path, w=40, h=30, seed=0, quality=95):
    return save(path, Image.fromarray(gradient(w, h, seed)), "JPEG", quality=quality)


def rgb_png(path, w=40, h=30, seed=0):
    return save(path, Image.fromarray(gradient(w, h, seed)), "PNG")


def cmyk_jpeg(path, w=40, h=30):
    return save(path, Image.fromarray(gradient(w, h)).convert("CMYK"), "JPEG", quality=95)


def gray_jpeg(path, w=40, h=30):
    return save(path, Image.fromarray(gradient(w, h)).convert("L"), "JPEG", quality=95)


def png_named_jpeg(path, w=40, h=30):
    return save(path, Image.fromarray(gradient(w, h)), "PNG")  # path ends in .JPEG


def exif_rotated_jpeg(path, w=40, h=30):
    """Stored as w x h with EXIF orientation 6 (rotate 90 degrees clockwise to display)."""
    image = Image.fromarray(gradient(w, h))
    exif = Image.Exif()
    exif[0x0112] = 6
    return save(path, image, "JPEG", quality=95, exif=exif.tobytes())


def rgba_png(path, w=40, h=30):
    rgba = np.concatenate([gradient(w, h), np.full((h, w, 1), 128, np.uint8)], -1)
    return save(path, Image.fromarray(rgba, "RGBA"), "PNG")


def palette_png(path, w=40, h=30):
    return save(path, Image.fromarray(gradient(w, h)).convert("P"), "PNG")


def gray16_png(path, w=40, h=30, value=0x1234):
    return save(path, Image.fromarray(np.full((h, w), value, np.uint16)), "PNG")


def empty_file(path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def truncated_jpeg(path, w=64, h=48):
    buf = io.BytesIO()
    Image.fromarray(gradient(w, h)).save(buf, "JPEG", quality=95)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def text_file(path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not an image\n")
    return path


def class_tree(root, classes=3, per_class=6, sizes=((40, 30),), seed=0):
    """root/<class_k>/img_i.jpg, sizes cycled per image; returns the expected labels in order."""
    labels = []
    for c in range(classes):
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            rgb_jpeg(Path(root) / f"class_{c}" / f"img_{i:03d}.jpg", w, h, seed=seed + 100 * c + i)
            labels.append(c)
    return labels


def cifar10_folder(root, train_per_batch=20, test=30, seed=0):
    """torchvision's on-disk CIFAR-10 layout (python-2 style pickles with bytes keys)."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    expected = {}
    for name, n in [(f"data_batch_{i}", train_per_batch) for i in range(1, 6)] + [("test_batch", test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, n)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [f"{i}.png".encode() for i in range(n)]}, f)
        expected[name] = (data, labels)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": train_per_batch}, f)
    return expected
