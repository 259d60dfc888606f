"""CrAM's cost options (interval, reuse, second_pass_fraction): the update of each step equals
one computed by hand (float64); they survive a state_dict round trip bit-identically, and fp16
overflow still skips the whole step."""
import copy
import io
import math
import os

import pytest
import torch
from torch import nn

from ffcv_cram import NMTopkCrAM, TopkCrAM
from ffcv_cram.config import UsageError
from ffcv_cram.train.cli import _check_cost_options
from ffcv_cram.train.loop import config_differences
from ffcv_cram.train.optimizer_options import OptimizerOptions
from ffcv_cram.train.step import TrainStep, make_optimizer
from nets import SmallConvNet, batch
from test_cram_step import LR, MOMENTUM, RHO, WD, assert_same_state, grads_at
from test_masks import nm_reference, sorted_reference
from test_train_step import InjectInf, setup

SPARSITY = 0.6


def hand_steps(model, batches, masks_fn, interval, reuse, fraction, plus, sparse_grad):
    """SPEC §2 on full steps (t % interval == 0), d = g (+ r) on the others, by hand, with
    SGD(momentum, weight decay) by hand. r: the latest full step's d - g."""
    params = list(model.parameters())
    bufs, reused = [None] * len(params), None
    for t, (x, y) in enumerate(batches):
        w = [p.detach().clone() for p in params]
        g = grads_at(model, x, y)
        if t % interval == 0:
            v = [wi + RHO * gi for wi, gi in zip(w, g)]
            prunable = [i for i, p in enumerate(params) if p.dim() > 1]
            masks = {i: m for i, m in zip(prunable, masks_fn([v[i] for i in prunable]))
                     if m is not None}
            for i, m in masks.items():
                v[i] = v[i] * m
            k = math.ceil(fraction * len(y))
            gc = grads_at(model, x[:k], y[:k], v, freeze_bn=True)
            c = [gc[i] * masks[i] if sparse_grad and i in masks else gc[i] for i in range(len(gc))]
            d = [ci + gi if plus else ci for ci, gi in zip(c, g)]
            reused = [di - gi for di, gi in zip(d, g)]
        else:
            d = [gi + ri for gi, ri in zip(g, reused)] if reuse else g
        with torch.no_grad():
            for i, p in enumerate(params):
                step = d[i] + WD * w[i]
                bufs[i] = step.clone() if bufs[i] is None else MOMENTUM * bufs[i] + step
                p.copy_(w[i] - LR * bufs[i])


def batches(n=5):
    return [batch(n=6, seed=10 + i) for i in range(n)]


def global_masks(ts):
    return sorted_reference(ts, SPARSITY)


def nm_masks_2_4(ts):
    return [nm_reference(t, 2, 4) if t.numel() % 4 == 0 else None for t in ts]


def topk(ps, **options):
    return TopkCrAM(ps, torch.optim.SGD, rho=RHO, sparsities=[SPARSITY], lr=LR,
                    momentum=MOMENTUM, weight_decay=WD, **options)


def nm(ps, **options):
    return NMTopkCrAM(ps, torch.optim.SGD, rho=RHO, patterns=[(2, 4)], lr=LR,
                      momentum=MOMENTUM, weight_decay=WD, **options)


CASES = [  # (optimizer, masks, interval, reuse, fraction, plus, sparse_grad)
    (topk, global_masks, 2, False, 1.0, True, True),
    (topk, global_masks, 2, True, 1.0, True, True),
    (topk, global_masks, 3, True, 1.0, False, True),
    (topk, global_masks, 2, True, 1.0, True, False),
    (topk, global_masks, 1, False, 0.5, True, True),
    (topk, global_masks, 2, True, 0.25, False, False),  # ceil(0.25 * 6) = 2 samples
    (nm, nm_masks_2_4, 2, True, 0.5, True, True),
]


@pytest.mark.parametrize("make,masks_fn,interval,reuse,fraction,plus,sparse_grad", CASES)
def test_each_option_matches_the_hand_update(make, masks_fn, interval, reuse, fraction, plus,
                                             sparse_grad):
    """Driven by the trainer's TrainStep, which slices the second pass's batch."""
    model = SmallConvNet().double()
    expected = copy.deepcopy(model)
    hand_steps(expected, batches(), masks_fn, interval, reuse, fraction, plus, sparse_grad)
    opt = make(model.parameters(), interval=interval, reuse=reuse,
               second_pass_fraction=fraction, plus_version=plus, sparse_grad=sparse_grad)
    step = TrainStep(model, opt, "cram")
    compressed = []
    for x, y in batches():
        step(x, y)
        compressed.append(opt.last_step_compressed)
    assert compressed == [t % interval == 0 for t in range(5)]
    assert opt.cram_steps == 5
    assert_same_state(model, expected)


def test_draws_happen_on_full_steps_only():
    """interval 2 draws, on its full steps, the sequence interval 1 draws on every step."""
    def draws(interval, steps):
        p = nn.Parameter(torch.randn(8, 8))
        opt = TopkCrAM([p], torch.optim.SGD, sparsities=(0.5, 0.7, 0.9), seed=3, lr=0.0,
                       interval=interval)
        out = []
        for _ in range(steps):
            p.grad = torch.randn(8, 8)
            full = opt.full_step_due
            opt.step(lambda: (p * torch.randn(8, 8)).sum().backward())
            if full:
                out.append(opt.last_sparsity)
        return out
    assert draws(2, 40) == draws(1, 20)


def _train(model, opt, data):
    step = TrainStep(model, opt, "cram")
    for x, y in data:
        step(x, y)


def test_state_dict_round_trip_continues_bit_identically():
    """Interrupted after a full and a one-pass step, a restored optimizer (through torch.save and
    a weights_only load) takes the next one-pass step with the saved reused term and the saved
    schedule, and every later step, exactly as the uninterrupted one."""
    options = dict(interval=3, reuse=True, second_pass_fraction=0.5)
    model = SmallConvNet().double()
    resumed_model = copy.deepcopy(model)
    data = batches(6)
    whole = TopkCrAM(model.parameters(), torch.optim.SGD, sparsities=(0.5, 0.7, 0.9), lr=LR,
                     momentum=MOMENTUM, **options)
    _train(model, whole, data)

    first = TopkCrAM(resumed_model.parameters(), torch.optim.SGD, sparsities=(0.5, 0.7, 0.9),
                     lr=LR, momentum=MOMENTUM, **options)
    _train(resumed_model, first, data[:2])
    buffer = io.BytesIO()
    torch.save({"model": resumed_model.state_dict(), "opt": first.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["opt"]["cram_steps"] == 2 and saved["opt"]["reused"]
    fresh = SmallConvNet().double()
    fresh.load_state_dict(saved["model"])
    second = TopkCrAM(fresh.parameters(), torch.optim.SGD, sparsities=(0.5, 0.7, 0.9), lr=LR,
                      momentum=MOMENTUM, **options)
    second.load_state_dict(saved["opt"])
    assert not second.full_step_due
    _train(fresh, second, data[2:])
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)


def _reused(opt):
    return {i: t.clone() for i, t in opt.state_dict()["reused"].items()}


def test_fp16_overflow_skips_one_pass_and_full_steps_of_the_schedule():
    torch.manual_seed(0)
    model, _, _, x, y = setup("cram", "fp16")
    opt = make_optimizer(model.parameters(), OptimizerOptions(
        method="cram", lr=0.1, momentum=0.9, weight_decay=5e-4, sparsities=(0.5, 0.7, 0.9),
        interval=2, reuse=True, second_pass_fraction=0.5))
    step = TrainStep(model, opt, "cram", "fp16")
    assert not step(x, y).skipped and opt.cram_steps == 1  # a full step: reused term stored
    reused = _reused(opt)
    for bad_pass, full in ((1, False), (2, True)):
        if full:
            assert not step(x, y).skipped  # the one-pass step after the skipped one
            reused = _reused(opt)
        weights = {k: v.clone() for k, v in model.state_dict().items() if "weight" in k}
        state = copy.deepcopy(opt.state_dict())
        scale, counter = step.scaler.get_scale(), opt.cram_steps
        assert opt.full_step_due == full
        InjectInf(model.layers[1][0].conv1.weight, on_call=bad_pass)
        assert step(x, y).skipped
        assert opt.cram_steps == counter and opt.full_step_due == full  # schedule unmoved
        for k, v in weights.items():
            assert torch.equal(model.state_dict()[k], v), k
        after = opt.state_dict()
        assert torch.equal(after["generator"], state["generator"])
        for i, s in state["base_optimizer"]["state"].items():
            assert torch.equal(after["base_optimizer"]["state"][i]["momentum_buffer"],
                               s["momentum_buffer"])
        assert all(torch.equal(after["reused"][i], r) for i, r in reused.items())
        assert step.scaler.get_scale() == scale * 0.5
    assert not step(x, y).skipped and opt.cram_steps == 3


@pytest.mark.parametrize("options,message", [
    (dict(interval=0), "interval=0: must be an integer >= 1"),
    (dict(interval=1.5), "interval=1.5"),
    (dict(second_pass_fraction=0.0), "second_pass_fraction=0.0: must be in (0, 1]"),
    (dict(second_pass_fraction=1.5), "second_pass_fraction=1.5"),
])
def test_invalid_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        TopkCrAM(SmallConvNet().parameters(), torch.optim.SGD, **options)


def test_manual_api_refuses_the_wrong_kind_of_step():
    model = SmallConvNet()
    opt = TopkCrAM(model.parameters(), torch.optim.SGD, lr=0.1, interval=2)
    x, y = batch(dtype=torch.float32)
    with pytest.raises(RuntimeError, match="full CrAM step"):
        opt.one_pass_step()
    nn.CrossEntropyLoss()(model(x), y).backward()
    opt.first_step(zero_grad=True)
    nn.CrossEntropyLoss()(model(x), y).backward()
    opt.second_step(zero_grad=True)
    with pytest.raises(RuntimeError, match="one-pass step"):
        opt.first_step()


def test_runs_saved_before_the_options_existed_still_resume():
    saved = {"cram": {"rho": 0.05}}
    current = {"cram": {"rho": 0.05, "interval": 1, "reuse": False, "second_pass_fraction": 1.0}}
    assert config_differences(saved, current) == []
    current["cram"]["interval"] = 2
    assert config_differences(saved, current) == ["cram.interval"]


INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
FUSED_DEVICES = [pytest.param("cpu", marks=pytest.mark.skipif(
                     not INTERPRETER, reason="Triton interpreter not active")),
                 pytest.param("cuda", marks=pytest.mark.cuda)]


def _fused_or_torch_steps(device, make, kernels, plus):
    torch.manual_seed(0)
    model = SmallConvNet().to(device).to(memory_format=torch.channels_last)
    opt = make(model.parameters(), kernels=kernels, interval=2, reuse=True,
               second_pass_fraction=0.5, plus_version=plus)
    for t in range(5):
        x, y = (v.to(device) for v in batch(dtype=torch.float32, seed=t))
        nn.functional.cross_entropy(model(x), y).backward()
        if opt.full_step_due:
            opt.first_step(zero_grad=True)
            assert opt._fused == bool(kernels)  # the path under test really ran
            k = opt.second_pass_size(len(y))
            nn.functional.cross_entropy(model(x[:k]), y[:k]).backward()
            opt.second_step(zero_grad=True)
        else:
            opt.step()
            opt.zero_grad()
    return model.state_dict()


@pytest.mark.parametrize("device", FUSED_DEVICES)
@pytest.mark.parametrize("make,plus", [(topk, True), (topk, False), (nm, True)])
def test_fused_kernels_with_the_options_equal_the_torch_path(device, make, plus):
    expected = _fused_or_torch_steps(device, make, False, plus)
    got = _fused_or_torch_steps(device, make, True, plus)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


@pytest.mark.cuda
def test_bf16_step_with_the_options_never_synchronises():
    """One-pass steps with reuse and full steps on part of the batch wait for the GPU no more
    than the reference step (not at all)."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = SmallConvNet().to(device).to(memory_format=torch.channels_last)
    opt = make_optimizer(model.parameters(), OptimizerOptions(
        method="cram", lr=0.1, momentum=0.9, weight_decay=5e-4, interval=2, reuse=True,
        second_pass_fraction=0.5))
    step = TrainStep(model, opt, "cram", "bf16", device=device)
    x, y = (v.to(device) for v in batch(n=16, dtype=torch.float32))
    x = x.contiguous(memory_format=torch.channels_last)
    for _ in range(2):
        step(x, y)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(4):
            assert step(x, y).skipped is False
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert opt._fused and opt.cram_steps == 6


COST_DEFAULTS = {"interval": 1, "reuse": False, "second_pass_fraction": 1.0,
                 "start_epoch": 0.0, "ramp": False}


@pytest.mark.parametrize("changes,optimizer,message", [
    ({"second_pass_fraction": 0.0}, "cram", "--cram.second_pass_fraction=0: must be in (0, 1]"),
    ({"second_pass_fraction": -0.5}, "cram_nm", "--cram.second_pass_fraction=-0.5: must be in"),
    ({"reuse": True}, "cram", "--cram.reuse=1 needs --cram.interval >= 2"),
    ({"interval": 2}, "sam", "--cram.interval: only for --training.optimizer=cram or cram_nm "
                             "(not sam)"),
    ({"second_pass_fraction": 0.5}, "sgd", "--cram.second_pass_fraction: only for"),
])
def test_trainer_flag_checks_name_the_flag_and_range(changes, optimizer, message):
    """(the CLI turns these into one `error:` line and exit status 2, see test_train_cli)"""
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        _check_cost_options({**COST_DEFAULTS, **changes}, optimizer, 10)
    _check_cost_options({**COST_DEFAULTS, "interval": 2, "reuse": True,
                         "second_pass_fraction": 0.25}, "cram_nm", 10)  # valid: no error
