"""The generated dataset: layout, determinism, and colour carrying no class information."""
import hashlib

import numpy as np
import pytest
from PIL import Image

from ffcv_cram.data import synthetic


def digest(root):
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.jpg"))}


def test_layout_and_determinism(tmp_path):
    info = synthetic.generate(tmp_path / "a", classes=4, train_per_class=5, val_per_class=2,
                              size=24, seed=3, workers=1)
    assert info["images"] == 28 and info["classes"] == list(synthetic.SHAPES)[:4]
    for split, count in [("train", 5), ("val", 2)]:
        folders = sorted((tmp_path / "a" / split).iterdir())
        assert [f.name for f in folders] == sorted(info["classes"])
        assert all(len(list(f.glob("*.jpg"))) == count for f in folders)
    image = Image.open(next((tmp_path / "a" / "train").rglob("*.jpg")))
    assert image.format == "JPEG" and image.size == (24, 24) and image.mode == "RGB"
    synthetic.generate(tmp_path / "b", classes=4, train_per_class=5, val_per_class=2, size=24,
                       seed=3, workers=2)
    synthetic.generate(tmp_path / "c", classes=4, train_per_class=5, val_per_class=2, size=24,
                       seed=4, workers=1)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")


def test_colour_does_not_give_the_class_away(tmp_path):
    synthetic.generate(tmp_path / "d", classes=5, train_per_class=60, val_per_class=0, size=32)
    means, labels = [], []
    for label, folder in enumerate(sorted((tmp_path / "d" / "train").iterdir())):
        for f in folder.glob("*.jpg"):
            means.append(np.asarray(Image.open(f), dtype=float).mean((0, 1)))
            labels.append(label)
    means, labels = np.array(means), np.array(labels)
    train, test = np.arange(len(labels)) % 2 == 0, np.arange(len(labels)) % 2 == 1
    centroids = np.stack([means[train & (labels == c)].mean(0) for c in range(5)])
    pred = np.linalg.norm(means[test][:, None] - centroids[None], axis=2).argmin(1)
    assert (pred == labels[test]).mean() < 0.35  # chance is 0.2: colour is a nuisance


def test_refusals_and_cli(tmp_path, capsys):
    with pytest.raises(ValueError, match="classes"):
        synthetic.generate(tmp_path / "x", classes=len(synthetic.SHAPES) + 1)
    assert synthetic.main(["--out", str(tmp_path / "y"), "--classes", "2", "--train-per-class",
                           "2", "--val-per-class", "1", "--size", "16"]) == 0
    assert synthetic.main(["--out", str(tmp_path / "y"), "--classes", "2"]) == 2
    assert "already exists" in capsys.readouterr().err
