"""torch.compile of the model (--training.compile), and the helper eval reuses.

Inductor's C++ backend compiles on the CPU, which costs seconds per graph on a small machine, so
every test uses the same tiny BatchNorm conv net and input shape: inductor's on-disk cache then
serves the repeats. Dynamo's own cache is per function (shared by every instance of the model
class), so each test starts from an empty one.
"""
import copy

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters
from torch.nn.parallel import DistributedDataParallel as DDP

from ffcv_cram import disable_running_stats, enable_running_stats
from ffcv_cram.models.compiled import (compile_model, compile_problem, graph_count, plain_module,
                                       replays_graphs)
from ffcv_cram.sparsity import prune_model, tune_batchnorm
from ffcv_cram.train.checkpoint import plain_state_dict
from ffcv_cram.train.optimizer_options import OptimizerOptions
from ffcv_cram.train.step import TrainStep, make_optimizer
from nets import SmallConvNet, batch
from process_group import run_ranks
from test_train_step import InjectInf

METHODS = ["sgd", "sam", "cram", "cram_nm"]


def data(step, rank=0):
    return batch(n=6, dtype=torch.float32, seed=1000 * rank + step)


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def make_step(method, model, compiled, workers=None, amp="none"):
    opt = make_optimizer(model.parameters(), OptimizerOptions(
        method=method, lr=0.1, momentum=0.9, weight_decay=5e-4, rho=0.05,
        sparsities=(0.5, 0.7, 0.9), seed=3))
    net = compile_model(model, workers=workers) if compiled else model
    return TrainStep(net, opt, method, amp)


def record_masks(optimizer) -> list:
    """Every step's CrAM masks, as the optimizer computed them (torch path: `_compress`)."""
    seen = []
    if hasattr(optimizer, "_compress"):
        compress = optimizer._compress

        def recording(prunable):
            masks = compress(prunable)
            seen.append([None if m is None else m.clone() for m in masks])
            return masks
        optimizer._compress = recording
    return seen


def dynamo_counters() -> dict:
    return {name: dict(values) for name, values in counters.items()}


@pytest.mark.parametrize("method", METHODS)
def test_compiled_steps_equal_eager_and_compile_once(method, fresh_dynamo):
    torch.manual_seed(0)
    eager_model = SmallConvNet()
    compiled_model = copy.deepcopy(eager_model)
    eager, compiled = make_step(method, eager_model, False), make_step(method, compiled_model, True)
    eager_masks, compiled_masks = record_masks(eager.optimizer), record_masks(compiled.optimizer)
    for i in range(12):
        x, y = data(i)
        a, b = eager(x, y), compiled(x, y)
        torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=1e-5)
        if i == 1:  # both BatchNorm states have run: no graph may be added from here on
            graphs, after_two = graph_count(), dynamo_counters()
    assert graphs == (1 if method == "sgd" else 2)  # the frozen second pass: one extra graph
    assert dynamo_counters() == after_two
    for (name, p), q in zip(eager_model.state_dict().items(), compiled_model.state_dict().values()):
        if p.is_floating_point():
            torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=name)
        else:  # num_batches_tracked: one update per step, none from the frozen pass
            assert int(q) == int(p) == 12, name
    assert len(compiled_masks) == len(eager_masks) == (12 if method.startswith("cram") else 0)
    for step_a, step_b in zip(eager_masks, compiled_masks):
        for m, n in zip(step_a, step_b):
            assert (m is None and n is None) or torch.equal(m, n)


@pytest.mark.slow  # 12 s with a warm inductor cache, 39 s cold on a loaded 2-core CPU
def test_bf16_channels_last_compiled_steps_follow_eager(fresh_dynamo):
    """The GPU recipe's setting (bf16 autocast, channels_last model and inputs) for SGD and both of
    CrAM+'s passes: compiled steps follow the eager ones within bf16's rounding (inductor fuses
    BatchNorm differently, so not bit for bit), with the same masks. The SGD model shares the
    compiled training graph: three graphs in all would mean a recompile."""
    torch.manual_seed(0)
    base = SmallConvNet().to(memory_format=torch.channels_last)
    pairs = {}
    for method in ("cram", "sgd"):
        eager_model, compiled_model = copy.deepcopy(base), copy.deepcopy(base)
        pairs[method] = (make_step(method, eager_model, False, amp="bf16"),
                         make_step(method, compiled_model, True, amp="bf16"))
    masks = {m: (record_masks(a.optimizer), record_masks(b.optimizer)) for m, (a, b) in pairs.items()}
    for i in range(4):
        x, y = data(i)
        x = x.contiguous(memory_format=torch.channels_last)
        for method, (eager, compiled) in pairs.items():
            a, b = eager(x, y), compiled(x, y)
            torch.testing.assert_close(b.loss, a.loss, rtol=2e-2, atol=2e-2, msg=method)
    assert graph_count() == 2  # the training graph and CrAM's frozen-BatchNorm one
    for method, (eager, compiled) in pairs.items():
        for p, q in zip(eager.model.parameters(), plain_module(compiled.model).parameters()):
            torch.testing.assert_close(q, p, rtol=2e-2, atol=2e-3, msg=method)
    eager_masks, compiled_masks = masks["cram"]
    assert len(eager_masks) == len(compiled_masks) == 4
    for step_a, step_b in zip(eager_masks, compiled_masks):
        for m, n in zip(step_a, step_b):
            assert (m is None and n is None) or (m != n).float().mean() < 0.02


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["sgd", "cram"])
def test_cuda_graph_replay_follows_eager(method, fresh_dynamo):
    """--training.compile_mode=reduce-overhead: the forward and backward replayed as CUDA graphs,
    through both of CrAM+'s passes (the second replays the frozen-BatchNorm graphs while the
    first pass's outputs are dead), track the eager steps, and replaying adds no graph."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    eager_model = SmallConvNet().to(device, memory_format=torch.channels_last)
    graph_model = copy.deepcopy(eager_model)
    steps = []
    for model, mode in ((eager_model, None), (graph_model, "reduce-overhead")):
        opt = make_optimizer(model.parameters(), OptimizerOptions(
            method=method, lr=0.1, momentum=0.9, weight_decay=5e-4, rho=0.05,
            sparsities=(0.5, 0.7, 0.9), seed=3))
        step = TrainStep(compile_model(model, mode) if mode else model, opt, method, device=device)
        step.replays_cuda_graphs = mode is not None
        steps.append(step)
    for i in range(8):
        x, y = (t.to(device) for t in data(i))
        x = x.contiguous(memory_format=torch.channels_last)
        a, b = (step(x, y) for step in steps)
        torch.testing.assert_close(b.loss, a.loss, rtol=1e-3, atol=1e-4)
        if i == 3:  # warm-up, recording and the first replays are behind us
            graphs = graph_count()
    assert graph_count() == graphs == (1 if method == "sgd" else 2)
    for p, q in zip(eager_model.parameters(), graph_model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-4)


@pytest.mark.slow  # 16 s with a cold inductor cache on a 2-core CPU
def test_fp16_with_loss_scaling_under_compile(fresh_dynamo):
    """The GradScaler path is the eager one: same losses, same scale, same skipped step."""
    torch.manual_seed(0)
    eager_model = SmallConvNet()
    compiled_model = copy.deepcopy(eager_model)
    steps = [make_step("cram", eager_model, False, amp="fp16"),
             make_step("cram", compiled_model, True, amp="fp16")]
    skipped = []
    for i in range(5):
        if i == 3:  # an overflow in the second pass of this step
            for model in (eager_model, compiled_model):
                InjectInf(model.fc.weight, on_call=2)
        a, b = (step(*data(i)) for step in steps)
        torch.testing.assert_close(b.loss, a.loss, rtol=2e-3, atol=2e-3)
        assert a.skipped == b.skipped
        assert steps[0].scaler.get_scale() == steps[1].scaler.get_scale()
        skipped.append(a.skipped)
    assert skipped[3] and not skipped[4]  # the injected overflow (step 1 overflows by itself)
    assert graph_count() == 2


def test_frozen_pass_leaves_running_stats_unchanged_under_compile(fresh_dynamo):
    model = SmallConvNet()
    compiled = compile_model(model)
    x, y = data(0)
    loss = nn.functional.cross_entropy
    loss(compiled(x), y).backward()
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for _ in range(2):
        before = [b.clone() for m in bn for b in m.buffers()]
        disable_running_stats(compiled)
        frozen = compiled(x)
        loss(frozen, y).backward()
        enable_running_stats(compiled)
        assert all(torch.equal(a, b) for a, b in zip(before, (b for m in bn for b in m.buffers())))
        disable_running_stats(model)
        torch.testing.assert_close(frozen, model(x))  # eager, frozen: batch statistics
        enable_running_stats(model)
        compiled(x)  # the training graph again: it does update the statistics
        assert not torch.equal(bn[0].running_mean, before[0])
        assert int(bn[0].num_batches_tracked) == int(before[2]) + 1
    assert graph_count() == 2


def test_in_place_weight_changes_do_not_recompile(fresh_dynamo):
    """What an eval sweep does around a compiled model: load weights, prune in place, tune
    BatchNorm (on the plain module, eagerly), evaluate. Parameters and buffers are graph inputs,
    so none of it recompiles, and every output equals the eager model's."""
    model = SmallConvNet().eval()
    compiled = compile_model(model)
    dense = copy.deepcopy(model.state_dict())
    x, _ = data(0)
    calibration = [data(i)[0] for i in range(1, 4)]

    @torch.no_grad()
    def check():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)

    check()
    masks, report = prune_model(plain_module(compiled), "global", 0.7)
    assert report.pruned_sparsity == pytest.approx(0.7, abs=1e-3)
    check()
    tune_batchnorm(plain_module(compiled), calibration, num_batches=3, momentum=None)
    check()
    weights = dict(model.named_parameters())
    assert all((weights[name][~mask] == 0).all() for name, mask in masks.items())
    model.load_state_dict(dense)
    check()
    assert graph_count() == 1


def test_plain_module_and_state_dicts_have_no_wrapper_prefixes():
    model = SmallConvNet()
    wrapped = nn.DataParallel(compile_model(model, "max-autotune-no-cudagraphs"))
    assert any(k.startswith("module._orig_mod.") for k in wrapped.state_dict())
    assert plain_module(wrapped) is model
    assert list(plain_state_dict(wrapped)) == list(model.state_dict())
    with pytest.raises(ValueError, match="mode='max-autotune'"):  # graphs, and eval offers it
        compile_model(model, "max-autotune")


def test_cuda_graph_mode_is_refused_off_cuda():
    """The trainer refuses it before any work (test_compile_train.py); this is the loop's check."""
    problem = compile_problem(torch.device("cpu"), "reduce-overhead")
    assert problem.startswith("mode reduce-overhead replays CUDA graphs and the device is cpu")
    assert compile_problem(torch.device("cpu"), "default") is None
    assert replays_graphs("reduce-overhead") and not replays_graphs("default")


def test_graph_limit_and_compile_workers(monkeypatch):
    import torch._inductor.config as inductor_config
    monkeypatch.delenv("TORCHINDUCTOR_COMPILE_THREADS", raising=False)
    monkeypatch.setattr(inductor_config, "compile_threads", inductor_config.compile_threads)
    monkeypatch.setattr(torch._dynamo.config, "cache_size_limit", 8)
    compile_model(SmallConvNet(), graphs=8, workers=1)
    assert torch._dynamo.config.cache_size_limit == 8 and inductor_config.compile_threads == 1
    compile_model(SmallConvNet(), graphs=10)  # past dynamo's limit it would run eagerly
    assert torch._dynamo.config.cache_size_limit == 10
    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "3")  # the user's choice wins
    compile_model(SmallConvNet(), workers=2)
    assert inductor_config.compile_threads == 1


WORLD, DDP_STEPS = 2, 4


class TwoBucketNet(nn.Module):
    """Over 1 MiB of weights in its second convolution: with DDP's bucket cap at 1 MiB (its first
    bucket's size), two buckets, so DDPOptimizer splits each graph in two."""

    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 1200, 3, padding=1, bias=False)  # 172,800 weights: 0.7 MB
        self.conv3 = nn.Conv2d(1200, 64, 3, padding=1, bias=False)  # 691,200 weights: 2.8 MB
        self.bn2 = nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv3(self.conv2(x))))
        return self.fc(x.mean((2, 3)))


def _train_compiled_and_eager(rank):
    torch.set_num_threads(1)
    torch.manual_seed(rank)  # different init per rank: DDP must broadcast rank 0's weights
    model = TwoBucketNet()
    eager_model = copy.deepcopy(model)
    step = make_step("cram", model, compiled=True, workers=1)  # the trainer's share of 2 cores
    step.model = DDP(step.model, bucket_cap_mb=1)  # compiled inside DDP, as the trainer does
    eager = make_step("cram", eager_model, compiled=False)
    eager.model = DDP(eager.model, bucket_cap_mb=1)
    losses = []
    for i in range(DDP_STEPS):
        losses.append((step(*data(i, rank)).loss, eager(*data(i, rank)).loss))
    return {"state": plain_state_dict(step.model), "eager": plain_state_dict(eager.model),
            "losses": losses, "graphs": graph_count(),
            "compiled_parts": counters["aot_autograd"]["total"]}


@pytest.mark.slow
def test_ddp_with_compile_splits_at_buckets_equals_eager_and_keeps_ranks_identical(tmp_path):
    r0, r1 = run_ranks(_train_compiled_and_eager, tmp_path, world_size=WORLD)
    assert r0["graphs"] == r1["graphs"] == 2
    # DDPOptimizer: each of the two graphs compiled as two parts, one per gradient bucket, so
    # the first bucket's all-reduce overlaps the rest of the backward
    assert r0["compiled_parts"] == r1["compiled_parts"] == 4
    assert r0["state"].keys() == r1["state"].keys()
    for name, value in r0["state"].items():  # BatchNorm statistics too: DDP gives every rank
        assert torch.equal(value, r1["state"][name]), name  # rank 0's before each forward, and
    # the last forward of a step is the frozen one
    assert int(r0["state"]["bn1.num_batches_tracked"]) == DDP_STEPS
    for compiled_loss, eager_loss in r0["losses"] + r1["losses"]:
        torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-4, atol=1e-5)
    for name, value in r0["eager"].items():
        torch.testing.assert_close(r0["state"][name], value, rtol=1e-4, atol=1e-5, msg=name)
