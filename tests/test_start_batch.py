"""Resuming an epoch part-way: `ImageLoader.set_epoch(epoch, start_batch)` delivers exactly the rest
of that epoch (order, augmentation) and hands FFCV only the samples it still has to read."""
import pytest
import torch

from betons import noise, write_test_beton
from ffcv_cram.data.loader_options import LoaderOptions
from ffcv_cram.data.pipelines import ImageLoader, LoaderError

N = 50  # with batches of 8: 6 whole batches and 2 samples that drop_last leaves out


@pytest.fixture(scope="module")
def beton(tmp_path_factory):  # sample i: seeded noise, label i
    return write_test_beton(tmp_path_factory.mktemp("start_batch") / "noise.beton", noise, N)


def batches(loader, epoch, start_batch=0):
    loader.set_epoch(epoch, start_batch)
    return [(x.clone(), y) for x, y in loader]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb)
                                    for (xa, ya), (xb, yb) in zip(a, b))


# cifar: FFCV decodes on the CPU, augmentation seeded per batch in torch; imagenet with
# decode='gpu' on a CPU device: crops and flips seeded per (seed, epoch, batch, rank)
@pytest.mark.parametrize("style,decode,rank,world_size", [
    ("cifar", "cpu", 0, 1), ("imagenet", "gpu", 1, 2)])
def test_a_resumed_epoch_is_the_rest_of_the_whole_epoch(beton, style, decode, rank, world_size):
    loader = ImageLoader(beton, train=True, batch_size=4 if world_size > 1 else 8, resolution=24,
                         seed=7,
                         options=LoaderOptions(style=style, num_workers=1, decode=decode,
                                               device="cpu", distributed=world_size > 1, rank=rank,
                                               world_size=world_size))
    assert len(loader) == 6
    delivered = []
    if loader.device_batches is not None:  # every batch FFCV hands over is decoded here
        decode_batch = loader.device_batches.__call__
        loader.device_batches = lambda *a: delivered.append(a[-1]) or decode_batch(*a)
    whole = batches(loader, 1)
    delivered.clear()
    rest = batches(loader, 1, start_batch=2)
    assert same(rest, whole[2:])
    if loader.device_batches is not None:
        assert delivered == [2, 3, 4, 5]  # the first two batches were never read or decoded
    # the skip was for that one iteration: the next starts at the beginning of its epoch
    assert same(batches(loader, 1), whole)
    assert not same(batches(loader, 2)[2:], rest)


def test_start_batch_outside_the_epoch_is_refused(beton):
    loader = ImageLoader(beton, train=True, batch_size=8,
                         options=LoaderOptions(style="cifar", num_workers=1))
    with pytest.raises(LoaderError, match="start_batch=6: an epoch has 6 batches"):
        loader.set_epoch(0, 6)
