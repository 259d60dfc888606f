"""TrainStep: AMP modes, and fp16 overflow in either pass skipping the whole step."""
import copy

import pytest
import torch

from ffcv_cram.models import get_model
from ffcv_cram.train.schedule import lr_at, resolution_at
from ffcv_cram.train.optimizer_options import OptimizerOptions
from ffcv_cram.train.step import TrainStep, make_optimizer, parameter_groups


def setup(method="cram", amp="none"):
    torch.manual_seed(0)
    model = get_model("resnet20", 10).to(memory_format=torch.channels_last)
    opt = make_optimizer(model.parameters(), OptimizerOptions(
        method=method, lr=0.1, momentum=0.9, weight_decay=5e-4, sparsities=(0.5, 0.7, 0.9)))
    x = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    return model, opt, TrainStep(model, opt, method, amp), x, torch.randint(0, 10, (8,))


@pytest.mark.parametrize("method", ["sgd", "sam", "cram", "cram_nm"])
@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_every_method_and_amp_mode_steps_on_cpu(method, amp):
    model, opt, step, x, y = setup(method, amp)
    before = [p.detach().clone() for p in model.parameters()]
    out = step(x, y)
    assert torch.isfinite(out.loss) and not out.skipped and 0 <= int(out.correct) <= 8
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


class InjectInf:
    """Makes the gradient of one parameter infinite in the n-th backward pass."""

    def __init__(self, param, on_call):
        self.calls, self.on_call = 0, on_call
        param.register_hook(self)

    def __call__(self, grad):
        self.calls += 1
        return torch.full_like(grad, float("inf")) if self.calls == self.on_call else grad


@pytest.mark.parametrize("method", ["sam", "cram", "cram_nm"])
@pytest.mark.parametrize("bad_pass", [1, 2])
def test_fp16_overflow_in_either_pass_skips_everything(method, bad_pass):
    model, opt, step, x, y = setup(method, "fp16")
    step(x, y)  # a normal step first, so momentum and the generator have state
    weights = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(opt.state_dict())
    scale = step.scaler.get_scale()
    InjectInf(model.layers[1][0].conv1.weight, on_call=bad_pass)
    out = step(x, y)
    assert out.skipped
    for k, v in model.state_dict().items():
        if "running" in k or "num_batches" in k:
            continue  # the first pass legitimately updated BN statistics
        assert torch.equal(v, weights[k]), k
    after = opt.state_dict()
    if "generator" in opt_state:  # the sparsity draw is rewound too
        assert torch.equal(after["generator"], opt_state["generator"])
    for i, s in opt_state["base_optimizer"]["state"].items():
        assert torch.equal(after["base_optimizer"]["state"][i]["momentum_buffer"], s["momentum_buffer"])
    assert step.scaler.get_scale() == scale * 0.5
    assert not step(x, y).skipped  # and training goes on


def test_fp16_sgd_overflow_is_skipped_by_the_scaler():
    model, opt, step, x, y = setup("sgd", "fp16")
    weights = copy.deepcopy(model.state_dict())
    scale = step.scaler.get_scale()
    InjectInf(model.fc.weight, on_call=1)
    step(x, y)
    assert step.scaler.get_scale() == scale * 0.5
    assert torch.equal(model.fc.weight, weights["fc.weight"])


def test_no_weight_decay_groups_chosen_by_rank():
    model = get_model("resnet20", 10)
    decay, no_decay = parameter_groups(model, 5e-4, decay_all=False)
    assert all(p.dim() > 1 for p in decay["params"]) and all(p.dim() <= 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0 and len(decay["params"]) + len(no_decay["params"]) == 65


def test_lr_schedules_and_resolution_ramp():
    assert lr_at(0, schedule="cosine", lr=0.1, epochs=10, warmup_epochs=5) == pytest.approx(0.02)
    assert lr_at(0.5, schedule="cosine", lr=0.1, epochs=10, warmup_epochs=5,
                 per_iteration=False) == pytest.approx(0.02)
    assert lr_at(7.5, schedule="cosine", lr=0.1, epochs=10, warmup_epochs=5) == pytest.approx(0.05)
    assert lr_at(3, schedule="step", lr=1.0, epochs=10, milestones=[2, 5]) == pytest.approx(0.1)
    assert lr_at(2, schedule="cyclic", lr=1.7, epochs=16, peak_epoch=2) == pytest.approx(1.7)
    assert lr_at(9, schedule="cyclic", lr=1.7, epochs=16, peak_epoch=2) == pytest.approx(0.85)
    assert lr_at(16, schedule="cyclic", lr=1.7, epochs=16, peak_epoch=2) == 0
    ramp = [resolution_at(e, 160, 192, 11, 13) for e in range(16)]
    assert ramp[:12] == [160] * 12 and ramp[13:] == [192] * 3  # 176 at epoch 12 rounds to 192
    assert all(r % 32 == 0 for r in ramp) and ramp[12] == 192
    # bounds that are not multiples of 32 are never overshot (48 would round to 64)
    assert [resolution_at(e, 32, 48, 0, 1) for e in range(3)] == [32, 48, 48]


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["sgd", "sam", "cram", "cram_nm"])
def test_sgd_update_is_fused_on_cuda(method):
    model = get_model("resnet20", 10).cuda()
    opt = make_optimizer(parameter_groups(model, 1e-4, decay_all=False),
                         OptimizerOptions(method=method, lr=0.1, momentum=0.9, weight_decay=1e-4))
    assert all(group["fused"] for group in opt.param_groups)
    step = TrainStep(model, opt, method, "bf16", device="cuda")
    step(torch.randn(8, 3, 32, 32, device="cuda"), torch.randint(0, 10, (8,), device="cuda"))
    assert all(torch.isfinite(p).all() for p in model.parameters())
