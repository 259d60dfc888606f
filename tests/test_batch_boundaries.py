"""Any batch size, dataset size and number of ranks: batches of one stay batches (labels of shape
(N,)), and every sample is delivered -- and counted by evaluate -- exactly once."""
import pytest
import torch

from ffcv_cram.data.loader_options import LoaderOptions
from ffcv_cram.data.pipelines import ImageLoader
from ffcv_cram.runtime.evaluate import evaluate
from indexed import IndexOracle, expected_top1, sample_index, write_indexed

N = 13  # prime: most batch sizes leave a remainder


@pytest.fixture(scope="module")
def beton(tmp_path_factory):
    return write_indexed(tmp_path_factory.mktemp("boundaries") / "indexed.beton", N)


def check_batches(loader, batch_size, style="cifar"):
    """The loader's batches as lists of labels, checking shapes and image-label pairing."""
    batches = []
    for x, y in loader:
        assert y.dtype == torch.int64 and y.shape == (len(x),) and 1 <= len(x) <= batch_size
        assert torch.equal(sample_index(x, style), y)  # each image with its own label
        batches.append(y.tolist())
    assert len(batches) == len(loader)
    assert all(len(b) == batch_size for b in batches[:-1])
    return batches


# (processes, batch size): a last batch of one (13 = 3 x 4 + 1, 12 + 1, 7 = 2 x 3 + 1, 5 = 4 + 1),
# batches dividing the shard exactly, one batch as large as the data, one larger; with 2 and 3
# processes the shards differ by a sample, and so by a batch; with 14 one process gets nothing
@pytest.mark.parametrize("world,batch_size", [
    (1, 1), (1, 4), (1, 12), (1, 13), (1, 14), (2, 3), (2, 6), (2, 7), (3, 4), (14, 4)])
def test_validation_batches_and_evaluation(beton, world, batch_size):
    ranks = range(world) if world <= 3 else (0, world - 1)  # 14 processes: the first and the last
    model = IndexOracle(N)
    seen, counted = [], 0
    for rank in ranks:
        loader = ImageLoader(beton, train=False, batch_size=batch_size,
                             options=LoaderOptions(style="cifar", num_workers=1,
                                                   distributed=world > 1, rank=rank,
                                                   world_size=world))
        shard = sum(check_batches(loader, batch_size), [])
        assert len(shard) == loader.num_samples == len(range(rank, N, world))
        metrics = evaluate(model, loader)
        assert metrics["samples"] == len(shard)
        assert metrics["top1"] == pytest.approx(expected_top1(shard, N))
        seen += shard
        counted += metrics["samples"]
    if world <= 3:
        assert sorted(seen) == list(range(N)) and counted == N  # every sample exactly once
    else:
        assert seen == [0]  # rank 0 holds sample 0; the last rank holds none and still evaluates


@pytest.mark.parametrize("world,batch_size,drop_last,style,decode", [
    (1, 4, False, "cifar", "cpu"),      # 4, 4, 4, 1 (flip + translate on a batch of one)
    (1, 4, False, "cifar", "gpu"),      # the decode='gpu' path (on the CPU here)
    (1, 13, True, "cifar", "cpu"),      # exactly one batch
    (1, 14, False, "cifar", "cpu"),     # a batch larger than the data: everything at once
    (1, 14, True, "cifar", "cpu"),      # ... or nothing, with drop_last
    (2, 5, False, "cifar", "cpu"),      # 13 trimmed to 12: 6 per rank = 5 + 1
    (2, 6, True, "cifar", "cpu"),       # 6 per rank, one batch each
])
def test_training_batches(beton, world, batch_size, drop_last, style, decode):
    seen = []
    for rank in range(world):
        loader = ImageLoader(beton, train=True, batch_size=batch_size, resolution=32,
                             drop_last=drop_last, seed=1,
                             options=LoaderOptions(style=style, num_workers=1,
                                                   distributed=world > 1, rank=rank,
                                                   world_size=world, decode=decode))
        shard = sum(check_batches(loader, batch_size, style), [])
        usable = N - N % world
        per_rank = usable // world
        assert len(shard) == (per_rank - per_rank % batch_size if drop_last else per_rank)
        seen += shard
    assert len(set(seen)) == len(seen)  # no sample twice in one epoch
