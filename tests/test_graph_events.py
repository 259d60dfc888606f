"""CUDA-graph steps stay bit-equal to eager steps through events after the capture (issue 30):
new sparsities or patterns assigned, a state dict without momentum buffers loaded, and what
`p.grad` holds after a step. Capture and replay are emulated on the CPU (`recorded_graphs`,
tests/test_bracket_select.py)."""
import copy

import pytest
import torch

from ffcv_cram import NMTopkCrAM, TopkCrAM
from nets import SmallConvNet, batch
from test_bracket_select import (assert_bit_equal, cram_run, fresh_plans,  # noqa: F401
                                 interpreter_only, recorded_graphs)


def graph_and_eager(cls, steps, events, **options):
    expected, _, eager_history = cram_run(cls, False, steps, events, **options)
    got, optimizer, history = cram_run(cls, True, steps, events, **options)
    assert history == eager_history
    return expected, got, optimizer


def set_attribute(name, value):
    def event(optimizer):
        setattr(optimizer, name, value)
    return event


@interpreter_only
def test_assigned_sparsities_replace_the_captured_ones(recorded_graphs):
    # graphs captured at step 2 for (0.3,); from step 3 on every step prunes 90 %
    expected, got, optimizer = graph_and_eager(
        TopkCrAM, 4, {3: set_attribute("sparsities", (0.9,))}, sparsities=(0.3,))
    assert optimizer.last_sparsity == 0.9
    assert_bit_equal(expected, got)


@interpreter_only
def test_assigned_patterns_replace_the_captured_ones(recorded_graphs):
    # groups of 4 in both patterns: the same second-half graph, another first half
    expected, got, _ = graph_and_eager(
        NMTopkCrAM, 4, {3: set_attribute("patterns", ((1, 4),))}, patterns=((2, 4),))
    assert_bit_equal(expected, got)


def test_assigned_sparsities_are_checked():
    optimizer = TopkCrAM(SmallConvNet().parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="sparsities"):
        optimizer.sparsities = (1.5,)
    optimizer.sparsities = 0.25
    assert optimizer.sparsities == (0.25,)


def load_without_momentum(optimizer):
    """A checkpoint whose base optimizer never stepped (or saved no momentum buffers)."""
    state = copy.deepcopy(optimizer.state_dict())
    state["base_optimizer"]["state"] = {}
    optimizer.load_state_dict(state)


@interpreter_only
@pytest.mark.parametrize("cls, options", [(TopkCrAM, {}), (NMTopkCrAM, {"patterns": ((2, 4),)})],
                         ids=["topk", "nm"])
def test_momentum_survives_a_load_without_momentum_buffers(cls, options, recorded_graphs):
    # captured after the load, the fused SGD would bake in its first step (buf = grad) for good
    expected, got, _ = graph_and_eager(cls, 5, {3: load_without_momentum}, **options)
    assert_bit_equal(expected, got)


def grads_after_steps(cuda_graph, steps, set_to_none):
    """p.grad after each full step of a loop that keeps gradients between steps (zeroed, with
    `set_to_none=False`, in place before each pass)."""
    torch.manual_seed(0)
    model = SmallConvNet().to(memory_format=torch.channels_last)
    optimizer = TopkCrAM(model.parameters(), torch.optim.SGD, lr=0.125, momentum=0.9,
                         fused=True, kernels=True, cuda_graph=cuda_graph, sparsities=(0.5,))
    grads = []
    for step in range(steps):
        x, y = batch(dtype=torch.float32, seed=step)
        for half in (optimizer.first_step, optimizer.second_step):
            optimizer.zero_grad(set_to_none=set_to_none)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            half()
        grads.append({f"{step}.{name}": p.grad.clone() for name, p in model.named_parameters()})
    return grads


@interpreter_only
@pytest.mark.parametrize("set_to_none", [True, False], ids=["set_to_none", "zeroed_in_place"])
def test_grad_after_a_step_is_the_eager_one(set_to_none, recorded_graphs):
    # warm-up (2 steps), capture, replay: p.grad holds d = M * g_C + g in each, as eagerly
    eager = grads_after_steps(False, 4, set_to_none)
    graphed = grads_after_steps(True, 4, set_to_none)
    assert len(recorded_graphs) == 2
    for expected, got in zip(eager, graphed):
        assert_bit_equal(expected, got)


def test_assigned_patterns_are_parsed():
    optimizer = NMTopkCrAM(SmallConvNet().parameters(), torch.optim.SGD, lr=0.1)
    optimizer.patterns = "1:4"
    assert optimizer.patterns == ((1, 4),)
    optimizer.patterns = (2, 8)
    assert optimizer.patterns == ((2, 8),)
    with pytest.raises(ValueError, match="patterns"):
        optimizer.patterns = ()
