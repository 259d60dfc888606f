"""CrAM's cost options under DDP (gloo, 2 processes): the schedule and the draws agree on every
rank without communicating, and the result is one process's on the union of the ranks' batches
(second pass: the union of each rank's first ceil(f * B) samples)."""
import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ffcv_cram import TopkCrAM
from ffcv_cram.train.step import TrainStep
from nets import SmallConvNet, batch
from process_group import run_ranks

STEPS, WORLD = 5, 2
loss_fn = nn.CrossEntropyLoss()


def make_optimizer(params):
    return TopkCrAM(params, torch.optim.SGD, rho=0.05, sparsities=(0.5, 0.7, 0.9), lr=0.1,
                    momentum=0.9, weight_decay=1e-4, seed=7, interval=2, reuse=True,
                    second_pass_fraction=0.5)


def rank_batch(step, rank):
    return batch(n=8, seed=100 * step + rank)


def _train(rank):
    torch.manual_seed(rank)  # different init per rank: DDP must broadcast rank 0's weights
    model = SmallConvNet(batchnorm=False).double()
    opt = make_optimizer(model.parameters())
    step = TrainStep(DDP(model), opt, "cram")  # the trainer's step: it slices the batch
    draws = []
    for t in range(STEPS):
        step(*rank_batch(t, rank))
        draws.append(opt.last_sparsity if opt.last_step_compressed else None)
    return {"params": [p.detach() for p in model.parameters()], "draws": draws,
            "cram_steps": opt.cram_steps}


@pytest.mark.slow
def test_ddp_with_interval_reuse_and_fraction_equals_one_process(tmp_path):
    r0, r1 = run_ranks(_train, tmp_path, world_size=WORLD)
    assert r0["draws"] == r1["draws"] and r0["cram_steps"] == r1["cram_steps"] == STEPS
    assert [d is not None for d in r0["draws"]] == [True, False, True, False, True]
    for a, b in zip(r0["params"], r1["params"]):
        assert torch.equal(a, b)
    torch.manual_seed(0)  # rank 0's initial weights
    model = SmallConvNet(batchnorm=False).double()
    opt = make_optimizer(model.parameters())
    for t in range(STEPS):
        (x0, y0), (x1, y1) = rank_batch(t, 0), rank_batch(t, 1)
        opt.zero_grad()
        loss_fn(model(torch.cat([x0, x1])), torch.cat([y0, y1])).backward()
        if opt.full_step_due:
            opt.first_step(zero_grad=True)
            k = opt.second_pass_size(len(y0))
            loss_fn(model(torch.cat([x0[:k], x1[:k]])), torch.cat([y0[:k], y1[:k]])).backward()
            opt.second_step()
        else:
            opt.step()
    for a, b in zip(r0["params"], model.parameters()):
        assert (a - b).abs().max() <= 1e-10
