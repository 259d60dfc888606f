"""CrAM and evaluation under torch.distributed (gloo, 2 processes on the CPU)."""
import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ffcv_cram import TopkCrAM, disable_running_stats, enable_running_stats
from ffcv_cram.data.loader_options import LoaderOptions
from ffcv_cram.data.pipelines import ImageLoader
from ffcv_cram.runtime.dist import Context, broadcast_buffers
from ffcv_cram.runtime.evaluate import evaluate
from indexed import IndexOracle, expected_top1, write_indexed
from nets import SmallConvNet, batch
from process_group import run_ranks

STEPS, WORLD = 5, 2
loss_fn = nn.CrossEntropyLoss()


def make_optimizer(params):
    return TopkCrAM(params, torch.optim.SGD, rho=0.05, sparsities=(0.5, 0.7, 0.9), lr=0.1,
                    momentum=0.9, weight_decay=1e-4, seed=7)


def cram_step(model, opt, x, y):
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    disable_running_stats(model)
    opt.step(lambda: loss_fn(model(x), y).backward())
    enable_running_stats(model)


def rank_batch(step, rank):
    return batch(n=8, seed=100 * step + rank)


def _train(rank, use_bn):
    torch.manual_seed(rank)  # different init per rank: DDP must broadcast rank 0's weights
    model = DDP(SmallConvNet(batchnorm=use_bn).double())
    opt = make_optimizer(model.parameters())
    for step in range(STEPS):
        cram_step(model, opt, *rank_batch(step, rank))
    return {"params": [p.detach() for p in model.module.parameters()],
            "draws_seen": opt.last_sparsity}


def test_ddp_ranks_stay_identical_with_batchnorm(tmp_path):
    r0, r1 = run_ranks(_train, tmp_path, True, world_size=WORLD)
    assert r0["draws_seen"] == r1["draws_seen"]
    for a, b in zip(r0["params"], r1["params"]):
        assert torch.equal(a, b)


def test_ddp_equals_one_process_on_the_union_batch(tmp_path):
    r0, _ = run_ranks(_train, tmp_path, False, world_size=WORLD)
    torch.manual_seed(0)  # rank 0's initial weights
    model = SmallConvNet(batchnorm=False).double()
    opt = make_optimizer(model.parameters())
    for step in range(STEPS):
        (x0, y0), (x1, y1) = rank_batch(step, 0), rank_batch(step, 1)
        cram_step(model, opt, torch.cat([x0, x1]), torch.cat([y0, y1]))
    for a, b in zip(r0["params"], model.parameters()):
        assert (a - b).abs().max() <= 1e-6


CASES = [(21, 5), (1, 4)]  # (validation samples, batch size)


def _evaluate(rank, folder):
    ctx = Context(rank=rank, world_size=WORLD)
    results = {}
    for n, batch_size in CASES:
        model = IndexOracle(n)
        if rank == 1:  # as after a training step: this rank's own BatchNorm statistics
            model.bn.running_mean.fill_(5.0)
        wrapped = DDP(model)
        loader = ImageLoader(f"{folder}/val{n}.beton", train=False, batch_size=batch_size,
                             options=LoaderOptions(style="cifar", num_workers=1, distributed=True,
                                                   rank=rank, world_size=WORLD))
        broadcast_buffers(model, ctx)
        metrics = evaluate(wrapped, loader, ctx)  # evaluate runs the module inside the wrapper
        results[n] = {"metrics": metrics, "batches": len(loader)}
    return results


def test_validation_with_uneven_shards_counts_every_sample_once(tmp_path):
    """21 samples in batches of 5: shards of 11 and 10, so 3 batches (the last of one) and 2.
    1 sample: the second rank has no batch at all. Both ranks finish, and the reduced metrics
    equal one process's: every sample counted once, with rank 0's BatchNorm statistics."""
    for n, _ in CASES:
        write_indexed(tmp_path / f"val{n}.beton", n)
    ranks = run_ranks(_evaluate, tmp_path, str(tmp_path), world_size=WORLD,
                      timeout_s=60)  # a mismatch fails, not hangs
    for n, batch_size in CASES:
        results = [rank[n] for rank in ranks]
        assert results[0]["batches"] > results[1]["batches"]
        one_process = evaluate(IndexOracle(n), ImageLoader(
            str(tmp_path / f"val{n}.beton"), train=False, batch_size=batch_size,
            options=LoaderOptions(style="cifar", num_workers=1)))
        assert one_process["top1"] == pytest.approx(expected_top1(range(n), n))
        for result in results:
            assert result["metrics"]["samples"] == n  # every sample once, summed over the ranks
            assert result["metrics"]["top1"] == pytest.approx(one_process["top1"])
            assert result["metrics"]["loss"] == pytest.approx(one_process["loss"])
