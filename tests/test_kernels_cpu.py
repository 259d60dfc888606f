"""The numba CPU backend of the mask library equals the torch path bit for bit."""
import copy

import pytest
import torch
from torch import nn

from ffcv_cram import TopkCrAM, disable_running_stats, enable_running_stats, kernels
from ffcv_cram.kernels import cpu_select
from ffcv_cram.sparsity.masks import compress_, magnitude_masks
from nets import SmallConvNet, batch

pytestmark = pytest.mark.skipif(not kernels.cpu_kernels_usable(),
                                reason="numba kernels unavailable (no thread-safe threading layer)")


def hard_inputs(dtype, seed):
    g = torch.Generator().manual_seed(seed)
    one = torch.tensor(1.0, dtype=dtype)
    tensors = [torch.randn(s, generator=g, dtype=dtype) for s in
               [(64, 16, 3, 3), (300,), (10, 33), (1, 1), (128, 64, 1, 1)]]
    tensors[1][:40] = 0.0
    tensors[1][40:80] = -0.0
    tensors[2] = tensors[2].round(decimals=1)  # many ties
    tensors[3].fill_(torch.nextafter(one, 2 * one).item())
    tensors[4][0, :8, 0, 0] = torch.tensor([1.0, -1.0] * 4, dtype=dtype)
    tensors[0] = tensors[0].contiguous(memory_format=torch.channels_last)
    return tensors


def run_both(monkeypatch, fn):
    monkeypatch.setenv("FFCV_CRAM_KERNELS", "0")
    torch_path = fn()
    monkeypatch.setenv("FFCV_CRAM_KERNELS", "1")
    return torch_path, fn()


def bits(t):
    return t.view({torch.float32: torch.int32, torch.float64: torch.int64}[t.dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scope", ["global", "uniform"])
@pytest.mark.parametrize("sparsity", [0.0, 0.13, 0.5, 0.7, 0.9, 0.99])
def test_masks_and_compression_equal_torch_path(monkeypatch, dtype, scope, sparsity):
    for seed in range(3):
        tensors = hard_inputs(dtype, seed)
        a, b = run_both(monkeypatch, lambda: magnitude_masks(tensors, sparsity, scope))
        assert all(torch.equal(x, y) for x, y in zip(a, b))

        def compressed():
            copies = [t.clone() for t in tensors]
            return copies, compress_(copies, sparsity, scope)
        (ta, ma), (tb, mb) = run_both(monkeypatch, compressed)
        for x, y, m in zip(ta, tb, ma):
            assert torch.equal(bits(x), bits(y))  # same bits, signed zeros included
            assert bool((x[~m] == 0).all())
        assert all(torch.equal(x, y) for x, y in zip(ma, mb))


def test_kernel_path_is_taken(monkeypatch):
    calls = []
    original = cpu_select.Plan.histogram
    monkeypatch.setattr(cpu_select.Plan, "histogram",
                        lambda self, *a: calls.append(a) or original(self, *a))
    monkeypatch.setenv("FFCV_CRAM_KERNELS", "1")
    magnitude_masks([torch.randn(1000)], 0.5)
    assert len(calls) == 2  # two digits for float32 keys
    monkeypatch.setenv("FFCV_CRAM_KERNELS", "0")
    magnitude_masks([torch.randn(1000)], 0.5)
    assert len(calls) == 2


def test_cram_steps_equal_torch_path(monkeypatch):
    start = SmallConvNet().to(memory_format=torch.channels_last)
    loss_fn = nn.CrossEntropyLoss()

    def train():
        model = copy.deepcopy(start)
        opt = TopkCrAM(model.parameters(), torch.optim.SGD, sparsities=(0.5, 0.9), lr=0.1,
                       momentum=0.9)
        for seed in range(4):
            x, y = batch(n=8, dtype=torch.float32, seed=seed)
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            disable_running_stats(model)
            opt.step(lambda: loss_fn(model(x), y).backward())
            enable_running_stats(model)
        return model
    a, b = run_both(monkeypatch, train)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
