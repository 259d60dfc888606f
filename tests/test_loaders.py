"""FFCV loaders: output format, normalisation, order, sharding, resolution changes."""
import pytest
import torch

from ffcv_cram.data.loader_options import LoaderOptions
from ffcv_cram.data.pipelines import (CIFAR_MEAN, CIFAR_STD, ImageLoader, LoaderError)
from indexed import write_indexed

N = 60


@pytest.fixture(scope="module")
def beton(tmp_path_factory):  # sample i: label i, every pixel = i
    return write_indexed(tmp_path_factory.mktemp("loaders") / "indexed.beton", N)


def labels_of(loader):
    return torch.cat([y for _, y in loader]).tolist()


def test_cifar_val_batches_are_normalised_channels_last_and_aligned(beton):
    loader = ImageLoader(beton, train=False, batch_size=16,
                         options=LoaderOptions(style="cifar", num_workers=1))
    seen = []
    for x, y in loader:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
        assert x.is_contiguous(memory_format=torch.channels_last) and y.dtype == torch.int64
        pixels = x * torch.tensor(CIFAR_STD).view(1, 3, 1, 1) + torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
        assert torch.allclose(pixels, y.view(-1, 1, 1, 1).float().expand_as(pixels), atol=1e-3)
        seen += y.tolist()
    assert seen == list(range(N)) and len(loader) == 4  # sequential, last batch kept


def test_random_order_is_a_seeded_permutation_per_epoch(beton):
    loader = ImageLoader(beton, train=True, batch_size=10, drop_last=False, seed=5,
                         options=LoaderOptions(style="cifar", num_workers=1))
    first, second = labels_of(loader), labels_of(loader)
    assert sorted(first) == sorted(second) == list(range(N)) and first != second
    loader.set_epoch(0)
    assert labels_of(loader) == first  # resuming at an epoch replays its order


def test_two_ranks_get_disjoint_shards_covering_the_data(beton):
    shards = [labels_of(ImageLoader(beton, train=True, batch_size=7, drop_last=False, seed=1,
                                    options=LoaderOptions(style="cifar", num_workers=1,
                                                          distributed=True, rank=r, world_size=2)))
              for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == N // 2
    assert not set(shards[0]) & set(shards[1]) and set(shards[0]) | set(shards[1]) == set(range(N))
    val = [labels_of(ImageLoader(beton, train=False, batch_size=8,
                                 options=LoaderOptions(style="cifar", num_workers=1,
                                                       distributed=True, rank=r, world_size=3)))
           for r in range(3)]
    assert sorted(sum(val, [])) == list(range(N))


def test_imagenet_style_dtype_and_resolution_change(beton):
    loader = ImageLoader(beton, train=True, batch_size=12, resolution=32,
                         options=LoaderOptions(style="imagenet", num_workers=1,
                                               dtype=torch.bfloat16))
    x, _ = next(iter(loader))
    assert x.shape == (12, 3, 32, 32) and x.dtype == torch.bfloat16
    assert x.is_contiguous(memory_format=torch.channels_last)
    loader.set_resolution(64)
    x, y = next(iter(loader))
    assert x.shape == (12, 3, 64, 64)
    # a flat image stays flat through crop, resize and flip: values match the label exactly
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    pixels = x.float() * std + mean
    assert torch.allclose(pixels, y.view(-1, 1, 1, 1).float().expand_as(pixels), atol=1.5)


def test_bad_arguments(beton, tmp_path):
    with pytest.raises(LoaderError, match="no such .beton"):
        ImageLoader(str(tmp_path / "missing.beton"), train=True, batch_size=4)
    with pytest.raises(LoaderError, match="rank"):
        ImageLoader(beton, train=True, batch_size=4,
                    options=LoaderOptions(distributed=True, rank=2, world_size=2))
    with pytest.raises(LoaderError, match="quasi_random"):
        ImageLoader(beton, train=True, batch_size=4, order="quasi_random",
                    options=LoaderOptions(world_size=2, distributed=True, rank=0))


def test_cifar_train_augmentation_replays_exactly(beton):
    def epoch_batches(epoch):
        loader = ImageLoader(beton, train=True, batch_size=20, seed=3,
                             options=LoaderOptions(style="cifar", num_workers=2))
        loader.set_epoch(epoch)
        return [(x.clone(), y) for x, y in loader]
    a, b = epoch_batches(1), epoch_batches(1)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, epoch_batches(2)))


def test_flip_translate_matches_a_direct_reference():
    from ffcv_cram.data.augment import flip_translate
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).view(2, 3, 5, 6)
    g = torch.Generator().manual_seed(0)
    flip = torch.rand(2, generator=g) < 0.5
    shift = torch.randint(0, 9, (2, 2), generator=g)
    fill = torch.tensor([-1.0, -2.0, -3.0])
    out = flip_translate(x, torch.Generator().manual_seed(0), padding=4, fill=fill)
    for i in range(2):
        img = x[i].flip(2) if flip[i] else x[i]
        padded = fill.view(3, 1, 1).repeat(1, 13, 14)  # the fill, per channel, around the image
        padded[:, 4:9, 4:10] = img
        dy, dx = shift[0, i], shift[1, i]
        assert torch.equal(out[i], padded[:, dy:dy + 5, dx:dx + 6])


def test_cifar_normalisation_and_crop_padding_are_the_references():
    """The CrAM reference: Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)) after
    RandomCrop(32, padding=4), which pads with black: a black pixel, normalised."""
    from ffcv_cram.data.normalisation import normalised_black
    assert torch.allclose(torch.tensor(CIFAR_STD) / 255, torch.tensor([0.2023, 0.1994, 0.2010]))
    assert torch.allclose(torch.tensor(CIFAR_MEAN) / 255, torch.tensor([0.4914, 0.4822, 0.4465]))
    black = normalised_black(CIFAR_MEAN, CIFAR_STD)
    assert torch.allclose(black, -torch.tensor([0.4914 / 0.2023, 0.4822 / 0.1994, 0.4465 / 0.2010]))


def test_cifar_training_batches_are_padded_with_black(beton):
    """Sample i is a flat image of value i; a shift shows the padding at the border, which must
    read back as black (0) on the pixel scale, never as the mean (the old zero fill)."""
    loader = ImageLoader(beton, train=True, batch_size=16, seed=3,
                         options=LoaderOptions(style="cifar", num_workers=1))
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    borders = 0
    for x, y in loader:
        pixels = (x * std + mean).round()
        inside = pixels == y.view(-1, 1, 1, 1).float()
        assert ((pixels == 0) | inside).all()
        borders += int((~inside).sum())
    assert borders > 0
