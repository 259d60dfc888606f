"""CosineLR: the reference formula per epoch, and the same curve per iteration."""
import math
import warnings

import pytest
import torch

from ffcv_cram import CosineLR, TopkCrAM


def reference_lr(base, epoch, warmup, end):
    if epoch < warmup:
        return base * (epoch + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / (end - warmup))) * base


def optimizer(lr=0.2):
    return TopkCrAM([torch.nn.Parameter(torch.randn(4, 4))], torch.optim.SGD, lr=lr, momentum=0.9)


def lrs(sched, steps):
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no optimizer.step() here: only the schedule matters
        for _ in range(steps):
            out.append(sched.optimizer.param_groups[0]["lr"])
            sched.step()
    return out


def test_per_epoch_values_match_reference():
    sched = CosineLR(optimizer(0.2), warmup_length=5, end_epoch=100)
    got = lrs(sched, 100)
    want = [reference_lr(0.2, e, 5, 100) for e in range(100)]
    assert got == pytest.approx(want, abs=1e-12)
    assert got[0] == pytest.approx(0.04) and got[4] == pytest.approx(0.2)


def test_per_iteration_follows_the_same_curve():
    spe = 7
    per_epoch = lrs(CosineLR(optimizer(), 5, 20), 20)
    per_iter = lrs(CosineLR(optimizer(), 5, 20, steps_per_epoch=spe), 20 * spe)
    assert per_iter[::spe] == pytest.approx(per_epoch, abs=1e-12)
    assert all(a >= b - 1e-12 for a, b in zip(per_iter[35:], per_iter[36:]))  # decays smoothly
    assert max(per_iter) == pytest.approx(0.2)


def test_state_dict_round_trip_and_argument_checks():
    sched = CosineLR(optimizer(), 2, 10, steps_per_epoch=3)
    lrs(sched, 5)
    opt = optimizer()
    again = CosineLR(opt, 2, 10, steps_per_epoch=3)  # build both, then load both (torch's order)
    opt.load_state_dict(sched.optimizer.state_dict())  # the current lr lives in the optimizer
    again.load_state_dict(sched.state_dict())
    assert lrs(again, 4) == lrs(sched, 4)
    with pytest.raises(ValueError, match="end_epoch"):
        CosineLR(optimizer(), 10, 10)
    with pytest.raises(ValueError, match="warmup_length"):
        CosineLR(optimizer(), -1, 10)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        CosineLR(optimizer(), 1, 10, steps_per_epoch=0)
