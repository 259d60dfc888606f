"""write_datasets.py --cfg.holdout_per_class: a fixed, class-balanced hold-out that never overlaps
the training file written from the same tree."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ffcv.reader import Reader

import imagefiles as files
from ffcv_cram.data.convert import ConversionError, convert
from ffcv_cram.data.sources import FolderSource, holdout_split

ROOT = Path(__file__).resolve().parents[1]


def stored_pixels(path):
    """Every sample's raw pixels as bytes, and its label, in stored order."""
    reader = Reader(str(path))
    blob = Path(path).read_bytes()
    images, labels = reader.metadata["f0"], reader.metadata["f1"].tolist()
    pixels = [blob[int(r["data_ptr"]):int(r["data_ptr"]) + int(r["width"]) * int(r["height"]) * 3]
              for r in images]
    return pixels, labels


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("holdout") / "train"
    files.class_tree(root, classes=3, per_class=5, sizes=((12, 10),))
    return root


def test_split_is_the_last_n_of_each_class_and_complementary():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    kept, held = holdout_split(labels, 2)
    assert held.tolist() == [1, 2, 5, 6, 8, 9]
    assert kept.tolist() == [0, 3, 4, 7]
    with pytest.raises(Exception, match="leaves no training images in class 0"):
        holdout_split(labels, 3)


def test_train_and_holdout_files_never_overlap_and_cover_the_tree(tree, tmp_path):
    source = FolderSource(tree)
    written = {}
    for split in ("train", "val"):
        out = tmp_path / f"{split}.beton"
        convert("folder", split, str(tree), str(out), holdout_per_class=2, num_workers=1,
                progress=False)
        written[split] = stored_pixels(out)
    val_pixels, val_labels = written["val"]
    train_pixels, train_labels = written["train"]
    assert val_labels == [0, 0, 1, 1, 2, 2] and train_labels == [0] * 3 + [1] * 3 + [2] * 3
    # the hold-out is exactly the last two files of each class, in sorted file order
    expected = [source.load(i).tobytes() for i in range(len(source))
                if Path(source.paths[i]).name in ("img_003.jpg", "img_004.jpg")]
    assert val_pixels == expected
    assert not set(val_pixels) & set(train_pixels)
    assert sorted(val_pixels + train_pixels) == sorted(source.load(i).tobytes()
                                                      for i in range(len(source)))


def test_calibration_is_drawn_from_the_training_side(tree, tmp_path):
    out = tmp_path / "calib.beton"
    convert("folder", "train", str(tree), str(out), holdout_per_class=2, calibration=3,
            num_workers=1, progress=False)
    val = tmp_path / "val.beton"
    convert("folder", "val", str(tree), str(val), holdout_per_class=2, num_workers=1,
            progress=False)
    assert not set(stored_pixels(out)[0]) & set(stored_pixels(val)[0])


def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "write_datasets.py"), *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.parametrize("data_dir,holdout,message", [
    (None, 5, "hold-out of 5 per class leaves no training images in class 'class_0' (5 images); "
              "lower --cfg.holdout_per_class"),
    ("missing", 2, "no such directory"),
])
def test_bad_holdout_inputs_are_one_line_and_write_nothing(tree, tmp_path, data_dir, holdout,
                                                           message):
    out = tmp_path / "out" / "val.beton"
    proc = run_cli("--cfg.dataset=folder", "--cfg.split=val",
                   f"--cfg.data_dir={tree if data_dir is None else tmp_path / data_dir}",
                   f"--cfg.write_path={out}", f"--cfg.holdout_per_class={holdout}")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], proc.stderr
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConversionError, match="must be >= 1"):
        convert("folder", "val", str(tree), str(out), holdout_per_class=-1)
