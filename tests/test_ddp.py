"""CrAM and evaluation under torch.distributed (gloo, 2 processes on the CPU)."""
import datetime

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ffcv_cram import TopkCrAM, disable_running_stats, enable_running_stats
from ffcv_cram.data.loader_options import LoaderOptions
from ffcv_cram.data.pipelines import ImageLoader
from ffcv_cram.runtime.dist import Context, broadcast_buffers
from ffcv_cram.runtime.evaluate import evaluate
from indexed import IndexOracle, expected_top1, write_indexed
from nets import SmallConvNet, batch

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


def _worker(rank, init_file, out_dir, use_bn):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(rank)  # different init per rank: DDP must broadcast rank 0's weights
        model = DDP(SmallConvNet(batchnorm=use_bn).double())
        opt = make_optimizer(model.parameters())
        for step in range(STEPS):
            cram_step(model, opt, *rank_batch(step, rank))
        torch.save({"params": [p.detach() for p in model.module.parameters()],
                    "draws_seen": opt.last_sparsity}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(tmp_path, use_bn):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path), use_bn), nprocs=WORLD, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]


def test_ddp_ranks_stay_identical_with_batchnorm(tmp_path):
    r0, r1 = run_ranks(tmp_path, use_bn=True)
    assert r0["draws_seen"] == r1["draws_seen"]
    for a, b in zip(r0["params"], r1["params"]):
        assert torch.equal(a, b)


def test_ddp_equals_one_process_on_the_union_batch(tmp_path):
    r0, _ = run_ranks(tmp_path, use_bn=False)
    torch.manual_seed(0)  # rank 0's initial weights
    model = SmallConvNet(batchnorm=False).double()
    opt = make_optimizer(model.parameters())
    for step in range(STEPS):
        (x0, y0), (x1, y1) = rank_batch(step, 0), rank_batch(step, 1)
        cram_step(model, opt, torch.cat([x0, x1]), torch.cat([y0, y1]))
    for a, b in zip(r0["params"], model.parameters()):
        assert (a - b).abs().max() <= 1e-6


CASES = [(21, 5), (1, 4)]  # (validation samples, batch size)


def _eval_worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))  # a mismatch fails, not hangs
    try:
        ctx = Context(rank=rank, world_size=WORLD)
        for n, batch_size in CASES:
            model = IndexOracle(n)
            if rank == 1:  # as after a training step: this rank's own BatchNorm statistics
                model.bn.running_mean.fill_(5.0)
            wrapped = DDP(model)
            loader = ImageLoader(f"{out_dir}/val{n}.beton", train=False, batch_size=batch_size,
                                 options=LoaderOptions(style="cifar", num_workers=1,
                                                       distributed=True, rank=rank,
                                                       world_size=WORLD))
            broadcast_buffers(model, ctx)
            metrics = evaluate(wrapped, loader, ctx)  # evaluate runs the module inside the wrapper
            torch.save({"metrics": metrics, "batches": len(loader)}, f"{out_dir}/eval{n}_{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_validation_with_uneven_shards_counts_every_sample_once(tmp_path):
    """21 samples in batches of 5: shards of 11 and 10, so 3 batches (the last of one) and 2.
    1 sample: the second rank has no batch at all. Both ranks finish, and the reduced metrics
    equal one process's: every sample counted once, with rank 0's BatchNorm statistics."""
    for n, _ in CASES:
        write_indexed(tmp_path / f"val{n}.beton", n)
    mp.spawn(_eval_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    for n, batch_size in CASES:
        results = [torch.load(tmp_path / f"eval{n}_{r}.pt") for r in range(WORLD)]
        assert results[0]["batches"] > results[1]["batches"]
        one_process = evaluate(IndexOracle(n), ImageLoader(
            str(tmp_path / f"val{n}.beton"), train=False, batch_size=batch_size,
            options=LoaderOptions(style="cifar", num_workers=1)))
        assert one_process["top1"] == pytest.approx(expected_top1(range(n), n))
        for result in results:
            assert result["metrics"]["samples"] == n  # every sample once, summed over the ranks
            assert result["metrics"]["top1"] == pytest.approx(one_process["top1"])
            assert result["metrics"]["loss"] == pytest.approx(one_process["loss"])
