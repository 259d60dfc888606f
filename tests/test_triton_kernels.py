"""The Triton kernels equal the torch path bit for bit: masks, N:M masks and whole CrAM steps.

Without a GPU they run in Triton's CPU interpreter (TRITON_INTERPRET=1, set in conftest.py); the
CUDA cases (ResNet-50 scale) run where a GPU is present.
"""
import os
import warnings

import pytest
import torch
import torchvision

from ffcv_cram import NMTopkCrAM, TopkCrAM
from ffcv_cram.kernels.triton_layout import same_layout
from ffcv_cram.optim import fused
from ffcv_cram.optim.fused import fused_step_misfit
from ffcv_cram.sparsity.masks import compress_, magnitude_masks, nm_masks, prunable_weights
from nets import SmallConvNet, batch

DEVICES = [pytest.param("cpu", marks=pytest.mark.skipif(
               os.environ.get("TRITON_INTERPRET") != "1", reason="Triton interpreter not active")),
           pytest.param("cuda", marks=pytest.mark.cuda)]


def hard_inputs(seed, device="cpu"):
    """Ties, exact and negative zeros, values one ulp apart, channels_last, odd sizes: 6 tensors."""
    g = torch.Generator().manual_seed(seed)
    one = torch.tensor(1.0)
    tensors = [torch.randn(s, generator=g) for s in
               [(64, 16, 3, 3), (300,), (10, 33), (1, 1), (128, 64, 1, 1), (7, 5, 2, 3)]]
    tensors[1][:40] = 0.0
    tensors[1][40:80] = -0.0
    tensors[2] = tensors[2].round(decimals=1)  # many ties
    tensors[3].fill_(torch.nextafter(one, 2 * one).item())
    tensors[4][0, :8, 0, 0] = torch.tensor([1.0, -1.0] * 4)
    tensors[4][1, :8, 0, 0] = torch.nextafter(one, 2 * one)  # one ulp above the ties at 1.0
    tensors[5] = tensors[5].round(decimals=0)  # few distinct values: ties across tensors
    tensors[0] = tensors[0].contiguous(memory_format=torch.channels_last)
    return [t.to(device) for t in tensors]


def random_shapes(seed):
    g = torch.Generator().manual_seed(seed)
    count = int(torch.randint(1, 8, (1,), generator=g))
    shapes = []
    for _ in range(count):
        dims = int(torch.randint(1, 5, (1,), generator=g))
        shapes.append(tuple(int(x) for x in torch.randint(1, 12, (dims,), generator=g)))
    return [torch.randn(s, generator=g) * 10 ** float(torch.randn(1, generator=g))
            for s in shapes]


def bits(t):
    return t.view(torch.int32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scope", ["global", "uniform"])  # uniform: 6 groups, the 3-pass schedule
@pytest.mark.parametrize("sparsity", [0.0, 0.13, 0.5, 0.7, 0.9, 0.999])
def test_masks_and_compression_equal_torch_path(device, scope, sparsity):
    for seed in range(2):
        tensors = hard_inputs(seed, device)
        expected = magnitude_masks(tensors, sparsity, scope, kernels=False)
        got = magnitude_masks(tensors, sparsity, scope, kernels=True)
        assert all(torch.equal(x, y) for x, y in zip(expected, got))

        by_torch = [t.clone() for t in tensors]
        by_kernels = [t.clone() for t in tensors]
        compress_(by_torch, sparsity, scope, kernels=False)
        masks = compress_(by_kernels, sparsity, scope, kernels=True)
        for x, y, m in zip(by_torch, by_kernels, masks):
            assert torch.equal(bits(x), bits(y))  # same bits, signed zeros included
            assert bool((y[~m] == 0).all())


@pytest.mark.parametrize("device", DEVICES)
def test_masks_equal_torch_path_on_random_shapes_and_scales(device):
    for seed in range(8):
        tensors = [t.to(device) for t in random_shapes(seed)]
        for scope in ("global", "uniform"):
            for sparsity in (0.3, 0.8):
                expected = magnitude_masks(tensors, sparsity, scope, kernels=False)
                got = magnitude_masks(tensors, sparsity, scope, kernels=True)
                assert all(torch.equal(x, y) for x, y in zip(expected, got)), (seed, scope)


@pytest.mark.parametrize("device", DEVICES)
def test_partial_ties_follow_the_logical_order_rule(device):
    # 16 equal magnitudes across two tensors, the first channels_last: prune the first 4 of
    # them in row-major order (which is not the memory order of the first tensor)
    a = torch.ones(2, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    b = -torch.ones(4)
    masks = magnitude_masks([a.to(device), b.to(device)], 0.25, kernels=True)
    kept = torch.cat([m.cpu().reshape(-1) for m in masks])
    assert kept.tolist() == [False] * 4 + [True] * 12


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 3), (0, 4), (4, 4)])
def test_nm_masks_equal_torch_path(device, n, m):
    tensors = hard_inputs(0, device) + [torch.randn(6, 8, 5, device=device)]
    expected = nm_masks(tensors, n, m, kernels=False)
    got = nm_masks(tensors, n, m, kernels=True)
    for x, y in zip(expected, got):
        assert (x is None) == (y is None)
        assert x is None or torch.equal(x, y)


def train_steps(device, cls, kernels, steps=3, regrad=None, **options):
    """`steps` CrAM steps of a channels_last SmallConvNet; `regrad(model)` runs after each
    backward (to hand the optimizer gradients of another layout)."""
    torch.manual_seed(0)
    model = SmallConvNet().to(device).to(memory_format=torch.channels_last)
    head = list(model.fc.parameters())
    body = [p for p in model.parameters() if all(p is not q for q in head)]
    groups = [{"params": body}, {"params": head, "rho": 0.2}]
    optimizer = cls(groups, torch.optim.SGD, lr=0.1, momentum=0.9, kernels=kernels, **options)
    for step in range(steps):
        x, y = batch(dtype=torch.float32, seed=step)
        x, y = x.to(device), y.to(device)

        def closure():
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            if regrad is not None:
                regrad(model)
            return loss
        closure()
        optimizer.first_step(zero_grad=True)
        assert optimizer._fused == bool(kernels)  # the path under test really ran
        closure()
        optimizer.second_step(zero_grad=True)
    return model.state_dict(), optimizer


STEP_CASES = [
    (TopkCrAM, {}),
    (TopkCrAM, {"scope": "uniform", "grad_norm": True}),
    (TopkCrAM, {"plus_version": False, "sparse_grad": False, "sparsities": (0.3, 0.95)}),
    (NMTopkCrAM, {}),
    (NMTopkCrAM, {"patterns": ((1, 3),), "grad_norm": True, "sparse_grad": False}),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cls,options", STEP_CASES)
def test_fused_cram_steps_equal_torch_path(device, cls, options):
    expected, _ = train_steps(device, cls, False, **options)
    got, _ = train_steps(device, cls, True, **options)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


@pytest.mark.parametrize("device", DEVICES)
def test_discarding_a_fused_step_restores_weights_and_draw(device):
    torch.manual_seed(0)
    model = SmallConvNet().to(device)
    optimizer = TopkCrAM(model.parameters(), torch.optim.SGD, lr=0.1, kernels=True)
    before = {k: v.clone() for k, v in model.named_parameters()}
    generator = optimizer.generator.get_state()
    x, y = (t.to(device) for t in batch(dtype=torch.float32))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.first_step(zero_grad=True)
    optimizer.discard_step()
    assert all(torch.equal(before[k], v) for k, v in model.named_parameters())
    assert torch.equal(optimizer.generator.get_state(), generator)


def test_same_layout_ignores_strides_of_size_one_dims():
    channels_last = torch.empty_strided((5, 8, 1, 1), (8, 1, 8, 8))  # as a 1x1 conv may have
    assert same_layout(torch.empty(5, 8, 1, 1), channels_last)  # strides (8, 1, 1, 1): same memory
    assert not same_layout(torch.empty(4, 6), torch.empty(6, 4).t())
    assert not same_layout(torch.empty(5, 8, 1, 1), torch.empty(5, 8, 1, 2)[..., :1])


@pytest.mark.parametrize("device", DEVICES)
def test_fused_step_takes_gradients_strided_otherwise_on_size_one_dims(device):
    def contiguous_grads(model):  # the 1x1 conv's channels_last weight: strides differ on kh, kw
        grad = model.conv3.weight.grad
        model.conv3.weight.grad = torch.empty(grad.shape, device=grad.device).copy_(grad)
        assert model.conv3.weight.grad.stride() != model.conv3.weight.stride()
    expected, _ = train_steps(device, TopkCrAM, False, regrad=contiguous_grads)
    got, _ = train_steps(device, TopkCrAM, True, regrad=contiguous_grads)  # True: fused or raise
    assert all(torch.equal(expected[name], got[name]) for name in expected)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_step_takes_unaligned_gradients(device):
    # DDP's gradient_as_bucket_view: gradients are views into one flat bucket, not 16-byte aligned
    def bucket_views(model):
        params = list(model.parameters())
        bucket = torch.empty(1 + sum(p.numel() for p in params), device=device)
        start = 1
        for p in params:
            view = bucket.as_strided(p.shape, p.stride(), start)  # laid out like p (dense)
            start += p.numel()
            p.grad = view.copy_(p.grad)
        assert params[0].grad.data_ptr() % 16 != 0
    for cls in (TopkCrAM, NMTopkCrAM):
        expected, _ = train_steps(device, cls, False, regrad=bucket_views)
        got, _ = train_steps(device, cls, True, regrad=bucket_views)
        assert all(torch.equal(expected[name], got[name]) for name in expected), cls


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="Triton interpreter not active")
def test_fused_step_misfit_names_the_reason():
    model = SmallConvNet()
    torch.nn.functional.cross_entropy(model(batch(dtype=torch.float32)[0]), batch()[1]).backward()
    params = list(model.parameters())
    assert fused_step_misfit(params, explicit=True) is None
    assert "tensors on cpu" in fused_step_misfit(params)  # automatic: CUDA only
    model.conv1.weight.grad = model.conv1.weight.grad.transpose(2, 3).contiguous().transpose(2, 3)
    assert "gradient laid out unlike its parameter" in fused_step_misfit(params, explicit=True)
    assert "torch.float64" in fused_step_misfit([p.double() for p in params], explicit=True)


def test_cuda_fallback_is_reported_once_with_its_reason(monkeypatch):
    # on CUDA the torch path synchronises with the host: say so, once (on the CPU it is expected)
    monkeypatch.setattr(fused, "_fallback_matters", lambda device: True)
    model = SmallConvNet().double()
    x, y = batch()

    def loss():
        return torch.nn.functional.cross_entropy(model(x), y).backward()

    def steps(optimizer):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                optimizer.zero_grad()
                loss()
                optimizer.step(loss)
        return [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    loss()
    reason = fused_step_misfit(list(model.parameters()))
    messages = steps(TopkCrAM(model.parameters(), torch.optim.SGD, lr=0.1))
    assert len(messages) == 1 and reason in messages[0] and "fused Triton step" in messages[0]
    assert steps(TopkCrAM(model.parameters(), torch.optim.SGD, lr=0.1, kernels=False)) == []


def test_kernels_true_refuses_what_the_kernels_cannot_do(monkeypatch):
    with pytest.raises(ValueError, match="kernels=True"):
        magnitude_masks([torch.randn(4, 4, dtype=torch.float64)], 0.5, kernels=True)
    monkeypatch.setenv("FFCV_CRAM_KERNELS", "0")
    with pytest.raises(ValueError, match="FFCV_CRAM_KERNELS"):
        magnitude_masks([torch.randn(4, 4)], 0.5, kernels=True)
    model = SmallConvNet().double()
    optimizer = TopkCrAM(model.parameters(), torch.optim.SGD, lr=0.1, kernels=True)
    x, y = batch()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(RuntimeError, match="kernels=True"):
        optimizer.first_step()
    with pytest.raises(ValueError, match="kernels="):
        TopkCrAM(model.parameters(), torch.optim.SGD, lr=0.1, kernels="yes")


@pytest.mark.cuda
def test_resnet50_scale_masks_equal_torch_path():
    torch.manual_seed(0)
    model = torchvision.models.resnet50().cuda().to(memory_format=torch.channels_last)
    weights = [p.detach() for _, _, p in prunable_weights(model)]
    for sparsity in (0.5, 0.7, 0.9):
        for scope in ("global", "uniform"):
            expected = magnitude_masks(weights, sparsity, scope, kernels=False)
            got = magnitude_masks(weights, sparsity, scope)  # automatic: Triton on CUDA
            assert all(torch.equal(x, y) for x, y in zip(expected, got)), (sparsity, scope)
    for n, m in ((2, 4), (4, 8)):
        for x, y in zip(nm_masks(weights, n, m, kernels=False), nm_masks(weights, n, m)):
            assert (x is None) == (y is None) and (x is None or torch.equal(x, y))
