"""ImageNet-style training crops keyed by (seed, epoch, sample index): FFCV's distribution, the
same crops on the CPU decoder and the GPU path, batches that replay whatever the thread count."""
import numpy as np
import pytest
import torch
from ffcv.fields.rgb_image import get_center_crop, get_random_crop

from betons import varied_gradient, varied_size, write_test_beton
from ffcv_cram.data.loader_options import LoaderOptions
from ffcv_cram.data.pipelines import IMAGENET_MEAN, IMAGENET_STD, ImageLoader
from ffcv_cram.data.seeded_crops import random_crops_and_flips

N = 24
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def size_of(i):
    width, height = varied_size(i)
    return height, width


def ramp(i):
    """Red = 3 x column, green = 3 x row, so a crop box can be read off the pixels."""
    rows, cols = np.mgrid[0:size_of(i)[0], 0:size_of(i)[1]]
    return np.stack([3 * cols, 3 * rows, np.full_like(rows, 128)], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def betons(tmp_path_factory):  # sample i: label i
    folder = tmp_path_factory.mktemp("seeded_crops")
    return {"ramps": write_test_beton(folder / "ramps.beton", ramp, N),
            "mixed": write_test_beton(folder / "mixed.beton", varied_gradient, N,
                                      write_mode="proportion", compress_probability=0.5)}


@pytest.mark.parametrize("height,width", [(375, 500), (500, 200), (60, 61)])
def test_crop_distribution_matches_ffcv(height, width):
    draws = 20000
    np.random.seed(0)
    scale, ratio = np.array((0.08, 1.0)), np.array((3 / 4, 4 / 3))
    theirs = np.array([get_random_crop(height, width, scale, ratio) for _ in range(draws)])
    ours, flips = random_crops_and_flips(1, 0, np.arange(draws), np.full(draws, height),
                                         np.full(draws, width))

    def stats(boxes):
        top, left, h, w = boxes.T.astype(np.float64)
        area, log_ratio = h * w / (height * width), np.log(w / h)
        whole = np.mean((h == height) | (w == width))  # the fallback, or a crop as large as it
        return np.concatenate([np.quantile(area, [0.1, 0.5, 0.9]), [area.mean()],
                               np.quantile(log_ratio, [0.1, 0.5, 0.9]), [log_ratio.mean(), whole],
                               [np.mean(top / np.maximum(height - h, 1)),
                                np.mean(left / np.maximum(width - w, 1))]])
    assert np.allclose(stats(ours), stats(theirs), atol=0.015), (stats(ours), stats(theirs))
    top, left, h, w = ours.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    assert abs(flips.mean() - 0.5) < 0.015


def test_no_fitting_attempt_gives_ffcv_s_centred_fallback():
    sizes = [(1, 1000), (1000, 1), (2, 900)]  # no crop of 8 % of the area fits in 1 or 2 rows
    boxes, _ = random_crops_and_flips(0, 0, np.arange(3), *np.array(sizes).T)
    scale, ratio = np.array((0.08, 1.0)), np.array((3 / 4, 4 / 3))
    assert [tuple(b) for b in boxes] == [get_random_crop(h, w, scale, ratio) for h, w in sizes]


def test_draws_depend_on_seed_epoch_and_index_only():
    heights, widths = np.full(500, 300), np.full(500, 400)
    boxes, flips = random_crops_and_flips(7, 3, np.arange(500), heights, widths)
    order = np.random.default_rng(0).permutation(500)[:40]  # another batch, another order
    again, again_flips = random_crops_and_flips(7, 3, order, heights[:40], widths[:40])
    assert np.array_equal(again, boxes[order]) and np.array_equal(again_flips, flips[order])
    big_seed, _ = random_crops_and_flips(2**64 - 1, 3, np.arange(500), heights, widths)
    for other in (random_crops_and_flips(8, 3, np.arange(500), heights, widths)[0],
                  random_crops_and_flips(7, 4, np.arange(500), heights, widths)[0],
                  random_crops_and_flips(7, 3, np.arange(1, 501), heights, widths)[0], big_seed):
        assert (other == boxes).all(1).mean() < 0.05


def box_error(images, labels, boxes, flips, size):
    """Largest distance, in grey levels, of ramp() crops from the ramps of `boxes` / `flips`."""
    pixels = images.float() * STD + MEAN
    worst = 0.0
    for k, label in enumerate(labels.tolist()):
        top, left, h, w = boxes[k]
        cols = left + (np.arange(size) + 0.5) * w / size - 0.5
        rows = top + (np.arange(size) + 0.5) * h / size - 0.5
        cols = cols[::-1].copy() if flips is not None and flips[k] else cols
        red = torch.from_numpy(3 * cols).float().view(1, size)
        green = torch.from_numpy(3 * rows).float().view(size, 1)
        worst = max(worst, (pixels[k, 0] - red).abs().max().item(),
                    (pixels[k, 1] - green).abs().max().item())
    return worst


def test_cpu_and_gpu_paths_crop_and_flip_each_sample_alike(betons):
    """Both decode paths deliver the crops and flips of `random_crops_and_flips` for each sample
    (a box off by one pixel is 3 grey levels away); validation is FFCV's centre crop."""
    size, seed, epoch = 16, 5, 2
    for decode in ("cpu", "gpu"):
        loader = ImageLoader(betons["ramps"], train=True, batch_size=8, resolution=size, seed=seed,
                             drop_last=False, options=LoaderOptions(num_workers=1, decode=decode))
        loader.set_epoch(epoch)
        flipped = 0
        for x, y in loader:
            heights, widths = np.array([size_of(i) for i in y.tolist()]).T
            boxes, flips = random_crops_and_flips(seed, epoch, y.numpy(), heights, widths)
            assert box_error(x, y, boxes, flips, size) < 1.5, decode
            flipped += flips.sum()
        assert 0 < flipped < N
        val = ImageLoader(betons["ramps"], train=False, batch_size=8, resolution=size,
                          options=LoaderOptions(num_workers=1, decode=decode))
        for x, y in val:
            boxes = np.array([get_center_crop(*size_of(i), None, 224 / 256) for i in y.tolist()])
            assert box_error(x, y, boxes, None, size) < 1.5, decode


def epoch_batches(loader, epoch=None):
    if epoch is not None:
        loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2)
                                    for (x1, y1), (x2, y2) in zip(a, b))


def test_cpu_batches_replay_whatever_the_thread_count(betons):
    """JPEG and raw samples; each epoch's crops depend on that epoch only, not on the epochs the
    loader ran before (the compiled pipeline reads the epoch at every batch)."""
    def loader(workers, order=None):
        return ImageLoader(betons["mixed"], train=True, batch_size=6, resolution=20, seed=11,
                           order=order, options=LoaderOptions(num_workers=workers))
    one = loader(1)
    first, second = epoch_batches(one), epoch_batches(one)
    two = loader(2)
    assert same(epoch_batches(two, 1), second) and same(epoch_batches(two, 0), first)
    assert same(epoch_batches(one, 0), first)
    fixed = loader(2, order="sequential")  # the same samples in the same batches every epoch
    a, b = epoch_batches(fixed, 0), epoch_batches(fixed, 1)
    assert [y.tolist() for _, y in a] == [y.tolist() for _, y in b]
    assert not any(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, b))
