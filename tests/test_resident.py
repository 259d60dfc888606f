"""Device-resident data (`ResidentLoader`): on the CPU its batches equal the FFCV path's bit for
bit (order, sharding, flips, shifts, normalisation), resumed epochs are the rest of the whole
epoch, and data that does not fit is refused with one line saying what it needs and has."""
import numpy as np
import pytest
import torch

from betons import noise, write_test_beton
from ffcv_cram.data.loader_options import LoaderOptions
from ffcv_cram.data.pipelines import ImageLoader, LoaderError
from ffcv_cram.data.resident import ResidentLoader, available_bytes, fit_problem
from test_start_batch import N, batches, beton, same  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def jpeg_beton(tmp_path_factory):
    return write_test_beton(tmp_path_factory.mktemp("resident") / "jpeg.beton", noise, N,
                            write_mode="jpg", jpeg_quality=90)


def resident(beton, **kw):
    return ResidentLoader(beton, num_workers=1, **kw)


@pytest.mark.parametrize("train,batch_size,rank,world_size", [
    (True, 8, 0, 1), (True, 4, 1, 2), (True, 5, 2, 3), (False, 8, 0, 1), (False, 7, 1, 2)])
def test_batches_equal_the_ffcv_paths_bit_for_bit(beton, train, batch_size, rank, world_size):
    ffcv = ImageLoader(beton, train=train, batch_size=batch_size, seed=3,
                       options=LoaderOptions(style="cifar", num_workers=1,
                                             distributed=world_size > 1, rank=rank,
                                             world_size=world_size))
    ours = resident(beton, train=train, batch_size=batch_size, seed=3, rank=rank,
                    world_size=world_size)
    assert len(ours) == len(ffcv)
    for epoch in (0, 1):
        expected, got = batches(ffcv, epoch), batches(ours, epoch)
        assert same(got, expected)
        for x, y in got:
            assert x.dtype == torch.float32 and y.dtype == torch.int64 and y.shape == (len(x),)
            assert x.is_contiguous(memory_format=torch.channels_last)


def test_jpeg_files_decode_once_like_the_ffcv_path(jpeg_beton):
    ffcv = ImageLoader(jpeg_beton, train=True, batch_size=8, seed=1,
                       options=LoaderOptions(style="cifar", num_workers=1))
    ours = resident(jpeg_beton, train=True, batch_size=8, seed=1)
    assert same(batches(ours, 0), batches(ffcv, 0))


def test_every_sample_once_per_epoch_over_the_ranks(beton):
    for world_size in (2, 3):
        seen = np.concatenate([
            torch.cat([y for _, y in batches(resident(beton, train=True, batch_size=1, seed=5,
                                                      rank=r, world_size=world_size), 2)]).numpy()
            for r in range(world_size)])
        assert len(seen) == N - N % world_size and len(set(seen.tolist())) == len(seen)
    val = [torch.cat([y for _, y in resident(beton, train=False, batch_size=4, rank=r,
                                             world_size=3)]) for r in range(3)]
    assert sorted(torch.cat(val).tolist()) == list(range(N))  # labels are sample numbers


def test_a_resumed_epoch_is_the_rest_of_the_whole_epoch(beton):
    loader = resident(beton, train=True, batch_size=8, seed=7)
    whole = batches(loader, 1)
    assert len(whole) == 6
    assert same(batches(loader, 1, start_batch=4), whole[4:])
    assert same(batches(loader, 1), whole)  # the skip was for that one iteration
    assert not same(batches(loader, 2), whole)
    with pytest.raises(LoaderError, match="start_batch=6: an epoch has 6 batches"):
        loader.set_epoch(0, 6)


def test_amp_dtype_and_contiguous_layout(beton):
    x, y = next(iter(resident(beton, train=True, batch_size=8, dtype=torch.bfloat16)))
    reference, _ = next(iter(resident(beton, train=True, batch_size=8)))
    assert x.dtype == torch.bfloat16 and torch.equal(x, reference.to(torch.bfloat16))
    x, _ = next(iter(resident(beton, train=False, batch_size=8, channels_last=False)))
    assert x.is_contiguous()


def test_data_that_does_not_fit_is_refused_saying_what_it_needs_and_has(beton):
    needed = N * (32 * 32 * 3 + 8)
    with pytest.raises(LoaderError) as err:
        resident(beton, train=True, batch_size=8, memory_limit=needed - 1)
    assert str(err.value) == (
        f"{beton}: resident data needs 0.1 MiB of host (RAM) memory, 0.1 MiB may be used "
        "(--data.resident_limit_mb); use the FFCV loader (--data.resident=0) or a device with "
        "more memory")
    assert resident(beton, train=True, batch_size=8, memory_limit=needed).labels.shape == (N,)
    available = available_bytes(torch.device("cpu"))  # this machine's MemAvailable
    assert available > 0
    problem = fit_problem("big.beton", 2 * available, torch.device("cpu"))
    assert problem.startswith("big.beton: resident data needs ") and "% of the " in problem
    assert fit_problem("small.beton", 1, torch.device("cpu")) is None
    with pytest.raises(LoaderError, match="no such .beton file"):
        resident(beton + ".missing", train=True, batch_size=8)
