"""CrAM under torch.distributed (gloo, 2 processes on the CPU)."""
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ffcv_cram import TopkCrAM, disable_running_stats, enable_running_stats
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
