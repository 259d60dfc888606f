"""CrAM's step schedule (issue 27): CrAM only from start_step on, and a ramp of the full-step
rate; the pattern is exactly the documented one, the steps before the start are plain SGD steps,
and a run interrupted across the switch point continues bit-identically."""
import copy
import io

import pytest
import torch

from ffcv_cram import TopkCrAM
from ffcv_cram.config import UsageError
from ffcv_cram.optim.cram_schedule import is_full_step
from ffcv_cram.train.cli import _check_cost_options
from ffcv_cram.train.loop import config_differences, cram_schedule_steps
from ffcv_cram.train.step import TrainStep
from nets import SmallConvNet, batch
from test_cheap_cram import COST_DEFAULTS
from test_cram_step import LR, MOMENTUM

SPARSITIES = (0.5, 0.7, 0.9)


def pattern(steps, **schedule):
    return "".join("F" if is_full_step(t, **schedule) else "." for t in range(steps))


def test_start_step_and_interval_pattern():
    assert pattern(14, interval=3, start_step=5) == ".....F..F..F.."
    assert pattern(4, interval=1, start_step=2) == "..FF"
    assert pattern(7, interval=3) == "F..F..F"  # the existing interval, unchanged


def test_ramp_pattern_is_the_documented_integer_formula():
    k, span, start = 4, 40, 3
    # N(t) = floor((2Tt + (k-1)t^2 + 2kT - 1) / (2kT)) full steps among the first t of the ramp
    count = lambda t: (2 * span * t + (k - 1) * t * t + 2 * k * span - 1) // (2 * k * span)
    got = pattern(start + span + 5, interval=k, start_step=start, ramp_steps=span)
    assert got == "..." + "".join("F" if count(t + 1) > count(t) else "." for t in range(span)) + "F" * 5
    assert got == "...F..F..F.F..F.F.F.FF.FF.FF.FFF.FFFFFFFFF.FFFFF"
    assert got[start:start + span].count("F") == count(span) == 25  # = T (1 + 1/k) / 2


def test_cli_turns_epochs_into_steps():
    assert cram_schedule_steps({"start_epoch": 1.5, "ramp": False}, epochs=4, iters=10) == (15, 0)
    assert cram_schedule_steps({"start_epoch": 1.5, "ramp": True}, epochs=4, iters=10) == (15, 25)
    assert cram_schedule_steps({"start_epoch": 0.0, "ramp": True}, epochs=2, iters=3) == (0, 6)


def make(params, **schedule):
    return TopkCrAM(params, torch.optim.SGD, sparsities=SPARSITIES, lr=LR, momentum=MOMENTUM,
                    **schedule)


def test_steps_before_the_start_are_plain_sgd_steps():
    model = SmallConvNet().double()
    plain = copy.deepcopy(model)
    data = [batch(n=6, seed=20 + i) for i in range(4)]
    cram = make(model.parameters(), interval=2, start_step=3)
    sgd = torch.optim.SGD(plain.parameters(), lr=LR, momentum=MOMENTUM)
    cram_step, sgd_step = TrainStep(model, cram, "cram"), TrainStep(plain, sgd, "sgd")
    compressed = []
    for x, y in data[:3]:
        cram_step(x, y)
        sgd_step(x, y)
        compressed.append(cram.last_step_compressed)
    assert compressed == [False] * 3 and cram.last_sparsity is None  # no draw, no second pass
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 plain.state_dict().values()))
    cram_step(*data[3])
    assert cram.last_step_compressed and cram.last_sparsity in SPARSITIES


@pytest.mark.parametrize("stop", [2, 3, 5])  # before, at and after the switch point
def test_resume_across_the_switch_point_is_bit_identical(stop):
    schedule = dict(interval=3, start_step=3, ramp_steps=6, reuse=True)
    model = SmallConvNet().double()
    resumed_model = copy.deepcopy(model)
    data = [batch(n=6, seed=30 + i) for i in range(10)]
    whole = make(model.parameters(), **schedule)
    step = TrainStep(model, whole, "cram")
    for x, y in data:
        step(x, y)

    first = make(resumed_model.parameters(), **schedule)
    step = TrainStep(resumed_model, first, "cram")
    for x, y in data[:stop]:
        step(x, y)
    buffer = io.BytesIO()
    torch.save({"model": resumed_model.state_dict(), "opt": first.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    fresh = SmallConvNet().double()
    fresh.load_state_dict(saved["model"])
    second = make(fresh.parameters(), **schedule)
    second.load_state_dict(saved["opt"])
    step = TrainStep(fresh, second, "cram")
    for x, y in data[stop:]:
        step(x, y)
    assert second.cram_steps == whole.cram_steps == 10
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("changes,optimizer,message", [
    ({"start_epoch": 10.0}, "cram", r"--cram.start_epoch=10: must be in \[0, --training.epochs=10\)"),
    ({"start_epoch": -1.0}, "cram", r"--cram.start_epoch=-1: must be in"),
    ({"ramp": True}, "cram", r"--cram.ramp=1 needs --cram.interval >= 2"),
    ({"start_epoch": 2.0}, "sgd", r"--cram.start_epoch: only for --training.optimizer=cram"),
])
def test_schedule_flags_are_checked(changes, optimizer, message):
    with pytest.raises(UsageError, match=message):
        _check_cost_options({**COST_DEFAULTS, **changes}, optimizer, 10)


def test_optimizer_refuses_a_bad_schedule():
    p = [torch.nn.Parameter(torch.zeros(4, 4))]
    with pytest.raises(ValueError, match="ramp_steps needs interval >= 2"):
        make(p, ramp_steps=5)
    with pytest.raises(ValueError, match="start_step=-1: must be an integer >= 0"):
        make(p, start_step=-1)


def test_schedule_keys_are_part_of_a_runs_identity():
    saved = {"cram": {"rho": 0.05}}
    current = {"cram": {"rho": 0.05, "start_epoch": 0.0, "ramp": False}}
    assert config_differences(saved, current) == []  # runs saved before the keys existed resume
    current["cram"].update(start_epoch=2.0, ramp=True)
    assert config_differences(saved, current) == ["cram.ramp", "cram.start_epoch"]
