"""The JPEG decoders of decode='gpu' and what the loader builds from them, on CPU tensors: region
decode equal to whole-image decode, the automatic choice and its one notice, the crop kernel fed
from the pinned-buffer table, no host-synchronising calls per batch, one producer across epochs."""
import io
import sys

import numpy as np
import pytest
import torch
from ffcv.reader import Reader
from PIL import Image

import imagefiles
from betons import write_test_beton
from ffcv_cram.data import device_batches, gpu_augment, jpeg_decoders, prefetch as prefetch_module
from ffcv_cram.data.encoded_bytes import JPG, RAW
from ffcv_cram.data.loader_options import DecodeVariants, GpuDecodeOptions, LoaderOptions
from ffcv_cram.data.pipelines import IMAGENET_STD, ImageLoader
from ffcv_cram.data.seeded_crops import random_crops_and_flips
from ffcv_cram.data.triton_crops import kernel_usable

N = 20
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def photo(i):
    """A noisy gradient, 40-159 x 30-109 px."""
    return imagefiles.gradient(40 + (i * 37) % 120, 30 + (i * 23) % 80, seed=i)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):  # sample i: label i
    return write_test_beton(tmp_path_factory.mktemp("jpeg_decoders") / "mixed.beton", photo, N,
                            write_mode="proportion", compress_probability=0.6, jpeg_quality=90)


def loader(path, gpu=GpuDecodeOptions(), **kw):
    args = dict(train=True, batch_size=8, resolution=24, seed=5, drop_last=False)
    options = LoaderOptions(num_workers=1, decode="gpu", device="cpu", gpu=gpu)
    return ImageLoader(path, **{**args, **kw}, options=options)


def variant(**kw):
    return GpuDecodeOptions(variants=DecodeVariants(**kw))


def batches(path, **kw):
    return [(x.clone(), y) for x, y in loader(path, **kw)]


def jpeg(pixels, subsampling):
    buffer = io.BytesIO()
    image = Image.fromarray(pixels)
    if subsampling == "gray":
        image.convert("L").save(buffer, "JPEG", quality=90)
    else:
        image.save(buffer, "JPEG", quality=90, subsampling=subsampling)
    return np.frombuffer(buffer.getvalue(), np.uint8).copy()


@pytest.mark.parametrize("subsampling", [0, 1, 2, "gray"])  # 4:4:4, 4:2:2, 4:2:0, grey
def test_cpu_region_decode_equals_the_whole_decode_cropped(subsampling):
    sizes = np.array([(75, 100), (48, 64), (81, 37), (200, 300), (17, 9), (33, 130)])
    streams = [jpeg(imagefiles.gradient(w, h, seed=k), subsampling) for k, (h, w) in enumerate(sizes)]
    decoder = jpeg_decoders.CpuDecoder("cpu")
    whole = decoder.decode(streams, sizes, None)
    for epoch in range(4):
        boxes, _ = random_crops_and_flips(1, epoch, np.arange(len(sizes)), sizes[:, 0], sizes[:, 1])
        for image, part, (top, left, h, w) in zip(whole, decoder.decode(streams, sizes, boxes), boxes):
            assert part.shape == (h, w, 3)
            assert np.array_equal(part, image[top:top + h, left:left + w])  # exact: MCU margin


@pytest.mark.parametrize("train", [True, False])
def test_region_decode_gives_the_crops_of_whole_image_decode(mixed, train):
    regions = loader(mixed, train=train)
    asked = []
    decode = regions.device_batches.decoder.decode

    def recording(streams, sizes, boxes, slot=0):
        asked.append(boxes is not None)
        return decode(streams, sizes, boxes, slot)
    regions.device_batches.decoder.decode = recording
    with_regions = [(x.clone(), y) for x, y in regions]
    whole = batches(mixed, train=train, gpu=variant(region_decode=False))
    assert asked and all(asked)  # every JPEG batch asked for the crop boxes only
    assert [y.tolist() for _, y in with_regions] == [y.tolist() for _, y in whole]
    for (a, _), (b, _) in zip(with_regions, whole):  # same crops and flips, same pixels
        assert torch.equal(a, b)


def hide(monkeypatch, *modules):
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` fails


def test_auto_falls_back_with_one_notice_and_the_same_crops(mixed, monkeypatch, capsys):
    monkeypatch.setitem(jpeg_decoders.AUTO_ORDER, "cpu", ("nvimgcodec", "torchcodec", "torchvision"))
    monkeypatch.setattr(jpeg_decoders, "_NOTICES", set())
    monkeypatch.delenv("FFCV_CRAM_HIDE_DECODERS", raising=False)
    hide(monkeypatch, "nvidia.nvimgcodec", "torchcodec")
    auto = batches(mixed)
    again = batches(mixed, train=False)
    err = capsys.readouterr().err
    assert err.count("notice:") == 1, err
    assert ("notice: nvImageCodec is not installed (pip install -e .[gpu]); TorchCodec is not "
            "installed (pip install torchcodec); decoding JPEGs with torchvision") in err
    chosen = batches(mixed, gpu=GpuDecodeOptions("torchvision"))
    assert all(torch.equal(a, b) and torch.equal(ya, yb) for (a, ya), (b, yb) in zip(auto, chosen))
    # another libjpeg-turbo DCT: a grey level or so
    ours = batches(mixed, gpu=GpuDecodeOptions("cpu"))
    for (a, ya), (b, yb) in zip(auto, ours):
        assert torch.equal(ya, yb)
        difference = ((a - b) * STD).abs()
        assert difference.mean() < 1.0 and difference.max() < 12, difference.max()
    assert len(again) == 3 and capsys.readouterr().err == ""


def test_a_chosen_decoder_that_cannot_run_is_refused(mixed, monkeypatch):
    hide(monkeypatch, "torchcodec")
    from ffcv_cram.data.loader_options import LoaderError
    with pytest.raises(LoaderError, match="jpeg_decoder='torchcodec': TorchCodec is not installed"):
        loader(mixed, gpu=GpuDecodeOptions("torchcodec"))


@pytest.mark.skipif(not kernel_usable(torch.device("cpu")), reason="needs TRITON_INTERPRET=1")
def test_crop_kernel_fed_by_the_pinned_table_equals_the_reference(mixed):
    """Raw samples (host pixels packed into the slot buffer), region-decoded JPEGs and whole
    torchvision-decoded ones (tensors) in one table: the kernel gives the reference's batches."""
    modes = Reader(mixed).metadata["f0"]["mode"]
    picked = np.concatenate([np.flatnonzero(modes == JPG)[:2], np.flatnonzero(modes == RAW)[:2]])
    for decoder in ("cpu", "torchvision"):
        kw = dict(batch_size=4, resolution=32, indices=picked)
        kernel, reference = [batches(mixed, gpu=GpuDecodeOptions(decoder, variants=DecodeVariants(
            crop_kernel=crop_kernel)), **kw) for crop_kernel in (True, False)]
        assert len(kernel) == 1
        for (a, ya), (b, yb) in zip(kernel, reference):
            assert torch.equal(ya, yb) and a.is_contiguous(memory_format=torch.channels_last)
            assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


SYNCING = [(torch.Tensor, "item"), (torch.Tensor, "tolist"), (torch.Tensor, "cpu"),
           (torch, "tensor"), (torch, "as_tensor"), (torch.cuda, "synchronize"),
           (torch.cuda.Stream, "synchronize"), (torch.cuda.Event, "synchronize")]


@pytest.mark.skipif(not kernel_usable(torch.device("cpu")), reason="needs TRITON_INTERPRET=1")
def test_steady_state_batches_make_no_host_synchronising_calls(mixed, monkeypatch):
    """What would wait for a GPU (.item(), .cpu(), a tensor built from host data on the device,
    a stream or event synchronize) is not called by the loader's per-batch code after the first
    batch; a CPU run sees the calls, the GPU benchmark counts the waits themselves."""
    calls = []
    ours = {device_batches.__name__, gpu_augment.__name__, prefetch_module.__name__,
            "ffcv_cram.data.gpu_decode", "ffcv_cram.data.pipelines"}

    def counting(owner, name):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__")
            if caller in ours:
                calls.append(f"{caller}: {name}")
            return original(*args, **kwargs)
        monkeypatch.setattr(owner, name, wrapper)
    running = loader(mixed, batch_size=4, resolution=16, indices=np.arange(12),
                     gpu=variant(crop_kernel=True))
    batches_seen = iter(running)
    next(batches_seen)  # start-up may synchronise (buffers, first decoder calls)
    for owner, name in SYNCING:
        counting(owner, name)
    rest = list(batches_seen)
    assert len(rest) == 2 and calls == []


def test_epochs_chain_in_one_producer_and_equal_epoch_by_epoch(mixed, monkeypatch):
    starts = []
    original = prefetch_module.prefetch

    def counting(*args, **kwargs):
        starts.append(1)
        return original(*args, **kwargs)
    monkeypatch.setattr("ffcv_cram.data.pipelines.prefetch", counting)
    chained = loader(mixed, batch_size=6, indices=np.arange(12))
    streamed = [(x.clone(), y) for x, y in chained.epochs(3)]
    assert len(starts) == 1 and len(streamed) == 6
    separate = loader(mixed, batch_size=6, indices=np.arange(12))
    expected = []
    for epoch in range(3):
        separate.set_epoch(epoch)
        expected += [(x.clone(), y) for x, y in separate]
    assert all(torch.equal(a, b) and torch.equal(ya, yb)
               for (a, ya), (b, yb) in zip(streamed, expected))
    endless = chained.epochs()
    assert len([next(endless) for _ in range(5)]) == 5  # on past the epoch's 2 batches
    endless.close()


nvimgcodec_missing = jpeg_decoders.unavailable_reason("nvimgcodec") is not None


@pytest.mark.skipif(nvimgcodec_missing, reason="nvImageCodec is not installed")
def test_nvimgcodec_region_decode_on_its_cpu_backend():
    sizes = np.array([(75, 100), (48, 64), (200, 300)])
    streams = [jpeg(imagefiles.gradient(w, h, seed=k), 2) for k, (h, w) in enumerate(sizes)]
    try:  # its CPU backend; nvImageCodec 0.8 needs a GPU even for that
        decoder = jpeg_decoders.choose_decoder("nvimgcodec", torch.device("cpu"))
    except jpeg_decoders.DecoderUnavailable as err:
        pytest.skip(str(err))
    boxes, _ = random_crops_and_flips(0, 0, np.arange(3), sizes[:, 0], sizes[:, 1])
    whole = decoder.decode(streams, sizes, None, slot=0)
    for _ in range(2):  # the second call decodes into the slot's buffers again
        parts = decoder.decode(streams, sizes, boxes, slot=1)
        for image, part, (top, left, h, w) in zip(whole, parts, boxes):
            difference = np.abs(part.astype(int) - image[top:top + h, left:left + w].astype(int))
            assert part.shape == (h, w, 3) and difference.max() <= 4 and difference.mean() < 0.5


def test_nvimgcodec_built_for_another_cuda_is_named_with_the_wheel_to_install(monkeypatch):
    monkeypatch.setattr(jpeg_decoders, "_installed", lambda module: True)
    monkeypatch.setattr(jpeg_decoders, "_nvimgcodec_builds", lambda: [("0.8.0.22", 12)])
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.delenv("FFCV_CRAM_HIDE_DECODERS", raising=False)
    assert jpeg_decoders.unavailable_reason("nvimgcodec") == (
        "nvImageCodec is built for CUDA 12 but torch uses CUDA 13.0 (pip install -e .[gpu] "
        "installs nvidia-nvimgcodec-cu13)")
    monkeypatch.setattr(jpeg_decoders, "_nvimgcodec_builds", lambda: [("0.8.0.22", 13)])
    assert jpeg_decoders.unavailable_reason("nvimgcodec") is None
