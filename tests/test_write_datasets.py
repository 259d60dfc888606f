"""write_datasets.py: round trips per write mode, real-world bad files, refusals, atomicity."""
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ffcv.fields.rgb_image import resizer
from ffcv.reader import Reader
from PIL import Image

import imagefiles as files
from ffcv_cram.atomic import write_text
from ffcv_cram.data.convert import ConversionError, convert
from ffcv_cram.data.sources import FolderSource
from ffcv_cram.data.writer import _finalize
from ffcv_cram.progress import bar as progress_bar

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "write_datasets.py"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def read_beton(path):
    """labels, modes ('raw'/'jpg'), (w, h) sizes and decoded pixels of every sample."""
    reader = Reader(str(path))
    meta = reader.metadata
    images, labels = meta["f0"], meta["f1"].tolist()
    sizes = {int(p): int(s) for p, s in zip(reader.alloc_table["ptr"], reader.alloc_table["size"])}
    blob = Path(path).read_bytes()
    pixels, modes = [], []
    for row in images:
        ptr, w, h = int(row["data_ptr"]), int(row["width"]), int(row["height"])
        if row["mode"] == 1:
            modes.append("raw")
            pixels.append(np.frombuffer(blob[ptr:ptr + w * h * 3], np.uint8).reshape(h, w, 3))
        else:
            modes.append("jpg")
            pixels.append(np.asarray(Image.open(io.BytesIO(blob[ptr:ptr + sizes[ptr]])).convert("RGB")))
    return labels, modes, [(int(r["width"]), int(r["height"])) for r in images], pixels


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree") / "train"
    labels = files.class_tree(root, classes=3, per_class=6, sizes=((40, 30), (20, 16), (64, 48)))
    return root, labels


def test_raw_round_trip_pixels_labels_and_resizing(tree, tmp_path):
    root, expected = tree
    out = tmp_path / "raw.beton"
    result, classes = convert("folder", "train", str(root), str(out), max_resolution=32,
                              num_workers=2, chunk_size=4, progress=False)
    assert result.written == 18 and not result.skipped and classes == ["class_0", "class_1", "class_2"]
    labels, modes, sizes, pixels = read_beton(out)
    assert labels == expected and set(modes) == {"raw"}
    source = FolderSource(root)
    for i, (size, got) in enumerate(zip(sizes, pixels)):
        original = np.asarray(Image.open(source.paths[i]).convert("RGB"))
        want = resizer(original, 32)
        assert np.array_equal(got, want)
        w, h = original.shape[1], original.shape[0]
        assert size == ((w, h) if max(w, h) <= 32 else (32, 32 * h // w))  # shrunk, never grown
    assert json.loads(Path(f"{out}.classes.json").read_text()) == classes
    assert not Path(f"{out}.skipped.txt").exists()


@pytest.mark.parametrize("mode,extra,expect", [
    ("jpg", {}, {"jpg"}),
    ("proportion", {"compress_probability": 0.5}, {"jpg", "raw"}),
    ("smart", {"smart_threshold": 40 * 30 * 3 - 1}, {"jpg", "raw"}),
])
def test_compressed_modes_round_trip(tree, tmp_path, mode, extra, expect):
    root, expected = tree
    out = tmp_path / f"{mode}.beton"
    convert("folder", "train", str(root), str(out), write_mode=mode, jpeg_quality=95,
            num_workers=2, chunk_size=5, progress=False, **extra)
    labels, modes, sizes, pixels = read_beton(out)
    assert labels == expected and set(modes) == expect
    source = FolderSource(root)
    for i, (m, got) in enumerate(zip(modes, pixels)):
        original = np.asarray(Image.open(source.paths[i]).convert("RGB")).astype(int)
        assert got.shape == original.shape
        assert np.abs(got - original).mean() < 6  # JPEG at quality 95
        if mode == "smart":
            assert (m == "jpg") == (original.size > extra["smart_threshold"])
    if mode == "proportion":  # seeded per sample: the same choices every time
        again = tmp_path / "again.beton"
        convert("folder", "train", str(root), str(again), write_mode=mode, num_workers=1,
                progress=False, **extra)
        assert read_beton(again)[1] == modes


def test_real_world_files_converted_or_skipped(tmp_path):
    root = tmp_path / "messy"
    files.rgb_jpeg(root / "a" / "0_ok.jpg")
    files.cmyk_jpeg(root / "a" / "1_cmyk.JPEG")
    files.gray_jpeg(root / "a" / "2_gray.JPEG")
    files.png_named_jpeg(root / "a" / "3_png.JPEG")
    files.exif_rotated_jpeg(root / "a" / "4_exif.jpg", 40, 30)
    files.rgba_png(root / "b" / "0_rgba.png")
    files.palette_png(root / "b" / "1_palette.png")
    files.gray16_png(root / "b" / "2_gray16.png", value=0x1234)
    files.empty_file(root / "b" / "3_empty.jpg")
    files.truncated_jpeg(root / "b" / "4_truncated.jpg")
    files.text_file(root / "b" / "5_notes.txt")
    out = tmp_path / "messy.beton"
    proc = run_cli("--cfg.dataset=folder", "--cfg.split=train", f"--cfg.data_dir={root}",
                   f"--cfg.write_path={out}", "--cfg.num_workers=2", "--cfg.chunk_size=3")
    assert proc.returncode == 0, proc.stderr
    assert "8 images" in proc.stdout and "3 skipped" in proc.stdout
    labels, modes, sizes, pixels = read_beton(out)
    assert labels == [0, 0, 0, 0, 0, 1, 1, 1]
    assert sizes[4] == (30, 40)  # EXIF orientation 6 applied: portrait
    assert np.all(pixels[7] == 0x12)  # 16-bit 0x1234 scaled to 8 bits, not clipped to 255
    assert all(p.dtype == np.uint8 and p.shape[2] == 3 for p in pixels)
    skipped = Path(f"{out}.skipped.txt").read_text().splitlines()
    reasons = dict(line.split("\t") for line in skipped)
    assert set(Path(k).name for k in reasons) == {"3_empty.jpg", "4_truncated.jpg", "5_notes.txt"}
    assert any("empty" in r for r in reasons.values())
    assert any("not an image" in r for r in reasons.values())


def test_fail_mode_names_the_file_and_leaves_nothing(tmp_path):
    root = tmp_path / "tree"
    files.rgb_jpeg(root / "a" / "ok.jpg")
    files.truncated_jpeg(root / "a" / "broken.jpg")
    out = tmp_path / "out.beton"
    proc = run_cli("--cfg.dataset=folder", "--cfg.split=train", f"--cfg.data_dir={root}",
                   f"--cfg.write_path={out}", "--cfg.on_bad_image=fail")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "broken.jpg" in errors[0], proc.stderr
    assert list(tmp_path.iterdir()) == [root]


def test_refused_class_list_write_leaves_nothing(tree, tmp_path):
    """The disk refuses classes.json (here: a folder stands at its name): one error line, exit 2,
    and no .beton without its class list."""
    out = tmp_path / "out.beton"
    (tmp_path / "out.beton.classes.json").mkdir()
    proc = run_cli("--cfg.dataset=folder", "--cfg.split=train",
                   f"--cfg.data_dir={tree[0].parent}", f"--cfg.write_path={out}")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert "out.beton.classes.json: cannot be written" in errors[0] and "Traceback" not in proc.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.beton.classes.json"]


def sigint_first(real):
    """`real`, preceded by a real SIGINT: the interrupt lands exactly there."""
    def interrupted(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)
    return interrupted


def bar_interrupted_at_close(*args, **kwargs):
    """The writer's progress bar, closed in its clean-up after the .beton's rename."""
    bar = progress_bar(*args, **kwargs)
    bar.close = sigint_first(bar.close)
    return bar


@pytest.mark.parametrize("where,attribute,replacement", [
    pytest.param("after the rename", "ffcv_cram.data.convert.write_text", sigint_first(write_text),
                 id="writing-the-class-list"),
    pytest.param("after the rename", "ffcv_cram.data.writer.progress_bar",
                 bar_interrupted_at_close, id="writer-clean-up-after-the-rename"),
    pytest.param("before the rename", "ffcv_cram.data.writer._finalize", sigint_first(_finalize),
                 id="before-the-rename"),
])
def test_interrupt_removes_this_runs_output_and_keeps_an_earlier_one(tree, tmp_path, monkeypatch,
                                                                      where, attribute,
                                                                      replacement):
    """Ctrl-C (a real SIGINT) over an earlier output: once this run's .beton is in place, it goes
    with what was written beside it (a .beton without its class list is unusable); before the
    rename, the earlier output stays as it was."""
    out = tmp_path / "out.beton"
    convert("folder", "train", str(tree[0].parent), str(out), progress=False)
    earlier = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(attribute, replacement)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        with pytest.raises(KeyboardInterrupt):
            convert("folder", "train", str(tree[0].parent), str(out), overwrite=True,
                    progress=False)
    finally:
        signal.signal(signal.SIGINT, before)
    left = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert left == (earlier if where == "before the rename" else {}), where


@pytest.mark.parametrize("make,message", [
    (lambda r: (r / "a").mkdir(parents=True), "class folder is empty"),
    (lambda r: r.mkdir(), "no class folders"),
    (lambda r: (files.empty_file(r / "a" / "x.jpg"), files.text_file(r / "b" / "y.jpg")),
     "no readable image"),
])
def test_unusable_trees_are_refused(tmp_path, make, message):
    root = tmp_path / "tree"
    make(root)
    proc = run_cli("--cfg.dataset=folder", "--cfg.split=train", f"--cfg.data_dir={root}",
                   f"--cfg.write_path={tmp_path / 'o.beton'}")
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "o.beton").exists()


@pytest.mark.parametrize("args,message", [
    (["--cfg.write_mode=proportion"], "compress_probability"),
    (["--cfg.write_mode=smart"], "smart_threshold"),
    (["--cfg.jpeg_quality=0"], "jpeg_quality"),
    (["--cfg.jpeg_quality=101"], "jpeg_quality"),
    (["--cfg.data_dir=/no/such/dir"], "no such directory"),
    (["--cfg.wirte_mode=raw"], "unknown key --cfg.wirte_mode (did you mean --cfg.write_mode?)"),
    (["--cfg.dataset=imagenet"], "ImageNet has 1000"),
])
def test_invalid_arguments_refused_up_front(tree, tmp_path, args, message):
    root, _ = tree
    base = {"--cfg.dataset": "folder", "--cfg.split": "train", "--cfg.data_dir": str(root),
            "--cfg.write_path": str(tmp_path / "o.beton")}
    for a in args:
        base[a.split("=")[0]] = a.split("=", 1)[1]
    proc = run_cli(*[f"{k}={v}" for k, v in base.items()])
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "o.beton").exists()


def test_config_file_unknown_key_and_existing_output(tree, tmp_path):
    root, _ = tree
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"cfg:\n  dataset: folder\n  split: train\n  data_dir: {root}\n"
                   f"  write_path: {tmp_path / 'o.beton'}\n  max_resolutoin: 32\n")
    proc = run_cli(f"--config-file={cfg}")
    assert proc.returncode == 2 and "unknown key 'cfg.max_resolutoin'" in proc.stderr
    cfg.write_text(cfg.read_text().replace("max_resolutoin", "max_resolution"))
    (tmp_path / "o.beton").write_bytes(b"an earlier output")
    proc = run_cli(f"--config-file={cfg}")
    assert proc.returncode == 2 and "already exists" in proc.stderr
    proc = run_cli(f"--config-file={cfg}", "--cfg.overwrite=1")
    assert proc.returncode == 0 and "18 images" in proc.stdout, proc.stderr
    assert read_beton(tmp_path / "o.beton")[2][0] == (32, 24)  # max_resolution from the file


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory):
    """600 large raw images for one writer process: ~10 s of writing, far longer than the
    time a loaded CPU may take to deliver a signal (30 files per class, each listed 10 times)."""
    root = tmp_path_factory.mktemp("big") / "tree"
    for c in range(2):
        for i in range(30):
            files.rgb_png(root / f"c{c}" / f"{i}.png", 600, 600, seed=i)
            for k in range(1, 10):
                (root / f"c{c}" / f"{i}_{k}.png").symlink_to(f"{i}.png")
    return root


def as_in_a_terminal():
    """Ctrl-C as a terminal delivers it: a suite started as a background job (`... &` in a
    script) passes SIGINT on ignored, and a program started so rightly keeps ignoring it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_leaves_no_output(big_tree, tmp_path, sig):
    root = big_tree
    out = tmp_path / "big.beton"
    proc = subprocess.Popen([sys.executable, str(ROOT / "write_datasets.py"), "--cfg.dataset=folder",
                             "--cfg.split=train", f"--cfg.data_dir={root}", f"--cfg.write_path={out}",
                             "--cfg.num_workers=1", "--cfg.chunk_size=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=as_in_a_terminal)
    deadline = time.time() + 60
    while not any(p.name.startswith("big.beton.partial") for p in tmp_path.iterdir()):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.2)
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted; no output was written" in err, err
    assert list(tmp_path.iterdir()) == []


def test_calibration_subset_is_seeded_balanced_and_bounded(tmp_path):
    root = tmp_path / "train"
    files.class_tree(root, classes=4, per_class=10)
    a, b, c = (tmp_path / f"{n}.beton" for n in "abc")
    for out, seed, workers in [(a, 1, 1), (b, 1, 2), (c, 2, 1)]:
        convert("folder", "train", str(root), str(out), calibration=10, seed=seed,
                num_workers=workers, chunk_size=3, progress=False)
    la, _, _, pa = read_beton(a)
    lb, _, _, pb = read_beton(b)
    lc, _, _, pc = read_beton(c)
    assert la == lb and all(np.array_equal(x, y) for x, y in zip(pa, pb))
    assert not all(np.array_equal(x, y) for x, y in zip(pa, pc))
    assert sorted(np.bincount(la).tolist()) == [2, 2, 3, 3]
    one_each = tmp_path / "one.beton"
    convert("folder", "train", str(root), str(one_each), calibration=4, progress=False)
    assert sorted(read_beton(one_each)[0]) == [0, 1, 2, 3]
    proc = run_cli("--cfg.dataset=folder", "--cfg.split=train", f"--cfg.data_dir={root}",
                   f"--cfg.write_path={tmp_path / 'x.beton'}", "--cfg.calibration=41")
    assert proc.returncode == 2 and "only 40 images" in proc.stderr
    with pytest.raises(ConversionError, match="split=train"):
        convert("folder", "val", str(root), str(tmp_path / "y.beton"), calibration=4)


def test_cifar10_from_torchvision_layout(tmp_path):
    expected = files.cifar10_folder(tmp_path / "cifar", train_per_batch=7, test=9)
    out = tmp_path / "cifar_train.beton"
    result, classes = convert("cifar10", "train", str(tmp_path / "cifar"), str(out), progress=False)
    assert result.written == 35 and classes[0] == "airplane" and len(classes) == 10
    labels, modes, sizes, pixels = read_beton(out)
    data = np.concatenate([expected[f"data_batch_{i}"][0] for i in range(1, 6)])
    want_labels = sum((expected[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert labels == want_labels and set(sizes) == {(32, 32)}
    assert np.array_equal(np.stack(pixels), data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    val = tmp_path / "cifar_val.beton"
    convert("cifar10", "val", str(tmp_path / "cifar"), str(val), progress=False)
    assert read_beton(val)[0] == expected["test_batch"][1]
    proc = run_cli("--cfg.dataset=cifar10", "--cfg.split=train", f"--cfg.data_dir={tmp_path}",
                   f"--cfg.write_path={tmp_path / 'z.beton'}")
    assert proc.returncode == 2 and "cfg.download=1" in proc.stderr
