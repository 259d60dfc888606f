"""decode='gpu': stored bytes straight from the .beton, region decode, the crop table and kernel,
corrupt-JPEG fallbacks, the prefetching hand-over and the CLI choices.

Without CUDA the whole path runs on CPU tensors (FFCV's libjpeg-turbo decoding each crop region,
the pinned-buffer layout, the Triton kernel under its interpreter where a test asks for it); the
tests marked cuda (the GPU decoders against the CPU one, a training run with decode=gpu) need a GPU.
"""
import contextlib
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import get_center_crop
from ffcv.loader import Loader, OrderOption
from ffcv.reader import Reader
from ffcv.transforms import Squeeze, ToTensor
from PIL import Image

from betons import noise, varied_gradient, write_test_beton
from ffcv_cram.data.encoded_bytes import (JPG, RAW, EncodedBatch, EncodedImageBytes,
                                          largest_image_bytes)
from ffcv_cram.data import jpeg_decoders
from ffcv_cram.data.gpu_augment import center_crops, normalize, resized_crops
from ffcv_cram.data.gpu_decode import decode_whole_on_cpu
from ffcv_cram.data.seeded_crops import random_crops_and_flips
from ffcv_cram.data.loader_options import GpuDecodeOptions, LoaderOptions
from ffcv_cram.data.pipelines import IMAGENET_MEAN, IMAGENET_STD, ImageLoader, LoaderError
from ffcv_cram.data.prefetch import prefetch

ROOT = Path(__file__).resolve().parents[1]
N = 24


def write(path, **encoding):
    return write_test_beton(path, varied_gradient, N, **encoding)  # sample i: label i


@pytest.fixture(scope="module")
def betons(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu_decode")
    return {"jpg": write(folder / "jpg.beton", write_mode="jpg", jpeg_quality=90),
            "mixed": write(folder / "mixed.beton", write_mode="proportion",
                           compress_probability=0.5, jpeg_quality=90)}


def stored_samples(path):
    """(mode, height, width, stored bytes) of every sample, read from the file directly."""
    reader = Reader(path)
    table = reader.alloc_table
    sizes = dict(zip(table["ptr"].tolist(), table["size"].tolist()))
    blob = Path(path).read_bytes()
    return [(int(r["mode"]), int(r["height"]), int(r["width"]),
             blob[int(r["data_ptr"]):int(r["data_ptr"]) + sizes[int(r["data_ptr"])]])
            for r in reader.metadata["f0"]]


def pixels_of(mode, height, width, data, decoder="pil"):
    if mode == RAW:
        return np.frombuffer(data, np.uint8).reshape(height, width, 3)
    if decoder == "ffcv":  # the decoder of decode='gpu' on a CPU device
        return decode_whole_on_cpu(np.frombuffer(data, np.uint8), height, width)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize("kind", ["jpg", "mixed"])
def test_byte_reader_returns_exactly_the_stored_bytes(betons, kind):
    from torchvision.io import ImageReadMode, decode_jpeg
    path = betons[kind]
    loader = Loader(path, batch_size=7, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
                    pipelines={"image": [EncodedImageBytes(largest_image_bytes(path))],
                               "label": [IntDecoder(), ToTensor(), Squeeze()]})
    expected = stored_samples(path)
    assert {mode for mode, *_ in expected} == ({JPG} if kind == "jpg" else {JPG, RAW})
    seen = 0
    for rows, labels in loader:
        batch = EncodedBatch.from_rows(rows)
        for k, label in enumerate(labels.tolist()):
            mode, height, width, data = expected[label]
            assert (batch.modes[k], batch.heights[k], batch.widths[k]) == (mode, height, width)
            assert batch.data(k).numpy().tobytes() == data
            if mode == JPG:
                ours = decode_jpeg(batch.data(k), mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()
                assert np.array_equal(ours, pixels_of(mode, height, width, data))
            else:
                assert np.array_equal(pixels_of(mode, height, width, data), varied_gradient(label))
            seen += 1
    assert seen == N


def test_resized_crops_match_a_per_image_reference():
    sizes = [(37, 50), (120, 90), (64, 64), (200, 31), (15, 300), (9, 9)]
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in sizes]
    heights, widths = np.array(sizes).T
    for size in (12, 61):  # mostly shrinking, mostly enlarging
        boxes, flips = random_crops_and_flips(0, size, np.arange(len(sizes)), heights, widths)
        out = resized_crops(images, boxes, size, flips)
        assert out.shape == (len(sizes), 3, size, size) and out.dtype == torch.float32
        for k, (image, (top, left, h, w)) in enumerate(zip(images, boxes)):
            crop = image[None, :, top:top + h, left:left + w].float()
            want = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True,
                                 align_corners=False)[0]
            want = want.flip(-1) if flips[k] else want
            assert torch.allclose(out[k], want, atol=2e-3), (size, k)
    x = normalize(out, IMAGENET_MEAN, IMAGENET_STD, torch.bfloat16)
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(x[0].float(), (out[0] - mean) / std, atol=2e-2)


def test_center_crops_are_ffcv_s():
    sizes = [(375, 500), (500, 200), (33, 33), (17, 90)]
    heights, widths = np.array(sizes).T
    ours = center_crops(heights, widths, 224 / 256)
    assert [tuple(row) for row in ours] == [get_center_crop(h, w, None, 224 / 256) for h, w in sizes]


def corrupt(path, out):
    """A copy of the jpg .beton with sample 3 truncated (zeros from the middle of its compressed
    data on: torchvision refuses it, FFCV's libjpeg-turbo decoder reads it with warnings) and
    sample 10's start-of-image marker gone (nothing reads it)."""
    blob = bytearray(Path(path).read_bytes())
    reader = Reader(path)
    sizes = dict(zip(reader.alloc_table["ptr"].tolist(), reader.alloc_table["size"].tolist()))
    pointers = reader.metadata["f0"]["data_ptr"].tolist()
    start, end = pointers[3], pointers[3] + sizes[pointers[3]]
    scan = blob.index(b"\xff\xda", start)  # start of scan: the compressed data follows
    middle = (scan + end) // 2
    blob[middle:end] = bytes(end - middle)
    blob[pointers[10]:pointers[10] + 4] = bytes(4)
    Path(out).write_bytes(bytes(blob))
    return str(out)


def test_corrupt_jpegs_fall_back_and_are_counted(betons, tmp_path):
    from ffcv_cram.runtime.dist import Context
    from ffcv_cram.train.loop import _decode_counts, _decode_record, _print_epoch
    path = corrupt(betons["jpg"], tmp_path / "corrupt.beton")
    loader = ImageLoader(path, train=False, batch_size=8, resolution=16,
                         options=LoaderOptions(num_workers=1, decode="gpu", device="cpu"))
    for epoch in (1, 2):
        before = _decode_counts(loader)
        batches = [(x.clone(), y) for x, y in loader]
        assert sum(len(y) for _, y in batches) == N
        assert _decode_record(before, loader, Context()) == {"decode_fallbacks": 1,
                                                             "decode_failures": 1}
        assert (loader.decode_fallbacks, loader.decode_failures) == (epoch, epoch)
    images, labels = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    blank = images[labels.tolist().index(10)]
    assert blank.abs().max() < 0.01  # the mean colour: zero after normalisation
    assert images[labels.tolist().index(3)].abs().max() > 0.1
    record = {"epoch": 0, "train_loss": 1.0, "train_top1": 50.0, "lr": 0.1, "images_per_s": 10.0,
              "skipped_steps": 0, "decode_fallbacks": 1, "decode_failures": 1}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        _print_epoch(record, Context())
    assert "train: 1 corrupt JPEGs decoded on the CPU, 1 unreadable (blank images)" in out.getvalue()


def test_validation_batches_match_a_per_image_reference(betons):
    path = betons["mixed"]
    loader = ImageLoader(path, train=False, batch_size=10, resolution=20,
                         options=LoaderOptions(num_workers=1, decode="gpu", device="cpu"))
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    samples = stored_samples(path)
    for x, y in loader:
        for image, label in zip(x, y.tolist()):
            pixels = torch.from_numpy(pixels_of(*samples[label], decoder="ffcv").copy()).permute(2, 0, 1)
            top, left, h, w = get_center_crop(pixels.shape[1], pixels.shape[2], None, 224 / 256)
            crop = pixels[None, :, top:top + h, left:left + w].float()
            want = F.interpolate(crop, size=(20, 20), mode="bilinear", antialias=True)[0]
            assert torch.allclose(image, (want - mean) / std, atol=1e-4)


def test_gpu_path_on_the_cpu_end_to_end(betons):
    path = betons["mixed"]

    def epoch_of(loader, epoch):
        loader.set_epoch(epoch)
        return [(x.clone(), y) for x, y in loader]
    loader = ImageLoader(path, train=True, batch_size=5, resolution=24, drop_last=False, seed=3,
                         options=LoaderOptions(num_workers=2, decode="gpu", device="cpu",
                                               dtype=torch.bfloat16))
    first = epoch_of(loader, 0)
    for x, y in first:
        assert x.shape[1:] == (3, 24, 24) and x.dtype == torch.bfloat16 and y.dtype == torch.int64
        assert x.is_contiguous(memory_format=torch.channels_last)
    assert sorted(torch.cat([y for _, y in first]).tolist()) == list(range(N))
    again = epoch_of(loader, 0)  # the same epoch replays exactly: order, crops and flips
    assert all(torch.equal(a, b) and torch.equal(ya, yb) for (a, ya), (b, yb) in zip(first, again))
    other = epoch_of(loader, 1)
    assert not all(torch.equal(a, b) for (a, _), (b, _) in zip(first, other))
    loader.set_resolution(40)  # progressive resizing: no new loader
    assert next(iter(loader))[0].shape == (5, 3, 40, 40)
    shards = [torch.cat([y for _, y in ImageLoader(
        path, train=True, batch_size=4, resolution=16, seed=1, drop_last=False,
        options=LoaderOptions(num_workers=1, decode="gpu", device="cpu", distributed=True, rank=r,
                              world_size=2))]).tolist() for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == N // 2 and sorted(shards[0] + shards[1]) == list(range(N))


def test_cifar_style_gpu_path_equals_the_cpu_path(tmp_path):
    path = write_test_beton(tmp_path / "cifar.beton", noise, 40, labels=np.arange(40) % 10)
    for train in (True, False):
        runs = [[(x.clone(), y) for x, y in ImageLoader(
            path, train=train, batch_size=16, seed=2,
            options=LoaderOptions(style="cifar", num_workers=1, decode=decode, device="cpu"))]
            for decode in ("cpu", "gpu")]
        assert len(runs[0]) == len(runs[1]) > 0
        for (a, ya), (b, yb) in zip(*runs):
            assert torch.equal(ya, yb) and torch.allclose(a, b, atol=1e-5)
            assert b.is_contiguous(memory_format=torch.channels_last)


def test_decode_choice_and_refusals(betons):
    assert ImageLoader(betons["jpg"], train=False, batch_size=4,
                       options=LoaderOptions(decode="auto")).decode == "cpu"
    with pytest.raises(LoaderError, match="decode='nvjpeg'"):
        ImageLoader(betons["jpg"], train=False, batch_size=4,
                    options=LoaderOptions(decode="nvjpeg"))
    with pytest.raises(LoaderError, match="images differ in size"):
        ImageLoader(betons["jpg"], train=False, batch_size=4,
                    options=LoaderOptions(style="cifar", decode="gpu"))
    with pytest.raises(LoaderError, match="jpeg_decoder='nvjpeg'"):
        ImageLoader(betons["jpg"], train=False, batch_size=4,
                    options=LoaderOptions(decode="gpu",
                                          gpu=GpuDecodeOptions(jpeg_decoder="nvjpeg")))
    with pytest.raises(LoaderError, match="gpu_prefetch=0: must be >= 1"):
        ImageLoader(betons["jpg"], train=False, batch_size=4,
                    options=LoaderOptions(decode="gpu", gpu=GpuDecodeOptions(prefetch=0)))
    loader = ImageLoader(betons["jpg"], train=False, batch_size=4,
                         options=LoaderOptions(decode="gpu", device="cpu"))
    assert loader.jpeg_decoder.startswith("FFCV's libjpeg-turbo") and \
        loader.device_batches.uses_regions


@pytest.mark.parametrize("script,extra,error", [
    ("train_imagenet.py", ["--data.train_dataset=x.beton", "--logging.folder=unused",
                           "--data.jpeg_decoder=nvimgcodec"],
     "error: --data.jpeg_decoder=nvimgcodec: nvImageCodec is hidden"),
    ("train_imagenet.py", ["--data.train_dataset=x.beton", "--logging.folder=unused",
                           "--data.gpu_prefetch=0"], "error: --data.gpu_prefetch='0': expected"),
    ("eval_sparse.py", ["--eval.checkpoint=x.pt", "--data.val_dataset=x.beton", "--out.dir=unused",
                        "--data.jpeg_decoder=torchcodec"],
     "error: --data.jpeg_decoder=torchcodec: TorchCodec is hidden"),
])
def test_unavailable_jpeg_decoder_or_bad_prefetch_is_a_one_line_usage_error(
        script, extra, error, tmp_path, run_main, monkeypatch):
    monkeypatch.setenv("FFCV_CRAM_HIDE_DECODERS", "nvimgcodec,torchcodec")
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_main(script, *extra)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(error), lines
    assert not (tmp_path / "unused").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
@pytest.mark.parametrize("script,extra", [
    ("train_imagenet.py", ["--data.train_dataset=x.beton", "--logging.folder=unused"]),
    ("train_cifar.py", ["--data.train_dataset=x.beton", "--logging.folder=unused"]),
    ("eval_sparse.py", ["--eval.checkpoint=x.pt", "--data.val_dataset=x.beton", "--out.dir=unused"]),
])
def test_decode_gpu_without_cuda_is_a_one_line_usage_error(script, extra, tmp_path, run_main,
                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_main(script, "--data.decode", "gpu", *extra)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --data.decode=gpu needs a CUDA GPU")
    assert "--data.decode=cpu" in lines[0] and not (tmp_path / "unused").exists()


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_prefetch_runs_depth_batches_ahead_in_order_and_stops_cleanly(depth):
    produced, closed = [], threading.Event()

    def batches():
        try:
            for i in range(100):
                produced.append(i)
                yield (torch.full((2,), i),)
        finally:
            closed.set()
    for taken, (x,) in enumerate(prefetch(batches, torch.device("cpu"), depth)):
        assert x[0] == taken  # in order
        assert len(produced) <= taken + 1 + depth  # the caller's batch and `depth` waiting ones
        if taken == 5:
            break
    assert closed.wait(5) and len(produced) <= 6 + depth
    everything = [int(x[0]) for (x,) in prefetch(lambda: (b for b in [(torch.full((1,), i),)
                                                                      for i in range(9)]),
                                                   torch.device("cpu"), depth)]
    assert everything == list(range(9))

    def failing():
        yield (torch.zeros(1),)
        raise RuntimeError("bad batch")
    got = []
    with pytest.raises(RuntimeError, match="bad batch"):
        for batch in prefetch(failing, torch.device("cpu"), depth):
            got.append(batch)
    assert len(got) == 1
    with pytest.raises(ValueError, match="depth=0"):
        next(prefetch(batches, torch.device("cpu"), 0))


@pytest.mark.cuda
@pytest.mark.parametrize("decoder", ["nvimgcodec", "torchcodec", "torchvision"])
def test_gpu_decoded_batches_match_cpu_decoded_ones(betons, decoder):
    if jpeg_decoders.unavailable_reason(decoder):
        pytest.skip(jpeg_decoders.unavailable_reason(decoder))
    path = betons["mixed"]
    for train in (True, False):
        runs = [[(x.float().cpu(), y.cpu()) for x, y in ImageLoader(
            path, train=train, batch_size=8, resolution=32, seed=4, drop_last=False,
            options=LoaderOptions(num_workers=2, decode="gpu", device=device,
                                  gpu=GpuDecodeOptions(jpeg_decoder=jpeg)))]
            for device, jpeg in (("cpu", "auto"), ("cuda", decoder))]
        for (a, ya), (b, yb) in zip(*runs):
            assert torch.equal(ya, yb)  # same order, hence the same crops and flips
            difference = ((a - b) * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)).abs()
            assert difference.mean() < 1.5 and difference.max() < 40  # 0-255 scale


@pytest.mark.cuda
def test_gpu_loader_steady_state_never_synchronises(betons):
    """Batches after the first, with nvImageCodec: no host synchronisation that torch sees, in
    either thread (torchvision's and TorchCodec's decoders synchronise inside their own call)."""
    import warnings
    if jpeg_decoders.unavailable_reason("nvimgcodec"):
        pytest.skip(jpeg_decoders.unavailable_reason("nvimgcodec"))
    loader = ImageLoader(betons["mixed"], train=True, batch_size=4, resolution=32, drop_last=False,
                         options=LoaderOptions(num_workers=2, decode="gpu", device="cuda",
                                               gpu=GpuDecodeOptions("nvimgcodec", prefetch=2)))
    batches = loader.epochs()
    next(batches)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(12):  # across epoch boundaries (6 batches per epoch)
                next(batches)
            batches.close()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    assert syncs == [], syncs[:3]


@pytest.mark.cuda
def test_train_imagenet_with_gpu_decode_and_progressive_resizing(betons, tmp_path):
    folder = tmp_path / "run"
    proc = subprocess.run([
        sys.executable, str(ROOT / "train_imagenet.py"), f"--data.train_dataset={betons['jpg']}",
        f"--data.val_dataset={betons['mixed']}", "--data.decode=gpu", "--model.arch=resnet18",
        f"--model.num_classes={N}", f"--logging.folder={folder}", "--training.epochs=2",
        "--training.global_batch_size=8", "--lr.scaling=none", "--training.optimizer=sgd", "--lr.warmup_epochs=0",
        "--resolution.min_res=32", "--resolution.max_res=48", "--resolution.end_ramp=1",
        "--resolution.val_res=40"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert [line["resolution"] for line in lines] == [32, 48] and "val_top1" in lines[-1]
    assert all(line["decode_fallbacks"] == line["decode_failures"] == 0 for line in lines)
