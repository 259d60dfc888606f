"""The bracket select on tie patterns (issue 30): all zero, all equal, more than 1,024 ties at the
threshold, already-pruned weights pruned to a lower sparsity -- on the fast path (ties ranked by
a scan across programs, no miss) and through the exact fallback (a forced miss): masks (and
zeroed weights) exactly the torch path's; and layouts beyond int32 offsets routed to the radix
path."""
import pytest
import torch

from ffcv_cram.kernels import triton_bracket, triton_select
from ffcv_cram.sparsity.masks import magnitude_masks, selection_groups
from test_bracket_select import (assert_clean, assert_masks_equal_torch_path,  # noqa: F401
                                 fresh_plans, plan_of)
from test_triton_kernels import DEVICES


def shaped(values, device):
    """A channels_last conv weight, a vector and a matrix (row-major and memory order differ)."""
    a, b, c = values[:288], values[288:589], values[589:]
    return [a.reshape(8, 4, 3, 3).contiguous(memory_format=torch.channels_last).to(device),
            b.to(device), c.reshape(7, -1).to(device)]


def already_pruned(seed, sparsity=0.9, n=1289):
    """Gaussian weights of which `sparsity` of the smallest are exact zeros (both signs)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=g)
    w[w.abs().argsort()[:round(sparsity * n)]] *= 0.0  # (-0.0 among them: magnitude 0 too)
    return w


WEIGHTS = {  # 1,289 weights each, over 1,024 of them tied at the threshold
    "all_zero": lambda: torch.zeros(1289),
    "all_equal": lambda: torch.full((1289,), -0.375),
    "over_1024_ties": lambda: torch.cat([torch.full((1100,), 0.5), torch.randn(189) * 4]),
    "pruned_90": lambda: already_pruned(0),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("weights", list(WEIGHTS))
@pytest.mark.parametrize("sparsity", [0.5, 0.3])
def test_masks_of_tied_weights_equal_torch_path(device, weights, sparsity):
    tensors = shaped(WEIGHTS[weights](), device)
    masks = magnitude_masks(tensors, sparsity, kernels=True)
    assert_masks_equal_torch_path(tensors, masks, sparsity)
    space = plan_of(tensors).workspace
    assert int(space.misses) == 0  # ties of any number are the fast path's
    assert space.state.cpu()[triton_bracket._PARTIAL] == 1  # (every pattern here straddles)
    assert_clean(space)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("weights", list(WEIGHTS))
def test_forced_miss_on_tied_weights_equals_torch_path(device, weights):
    tensors = shaped(WEIGHTS[weights](), device)
    groups, counts = selection_groups(tensors, 0.5, "global")
    masks = [torch.empty_like(t, dtype=torch.bool) for t in tensors]
    triton_select.select(tensors, groups, counts, masks, zero=False, method="bracket",
                         force_miss=True)
    assert_masks_equal_torch_path(tensors, masks, 0.5)
    space = plan_of(tensors).workspace
    assert int(space.misses) == 1  # the fallback's passes decided
    assert_clean(space)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("weights", ["all_equal", "pruned_90"])
@pytest.mark.parametrize("force_miss", [False, True], ids=["fast_path", "forced_miss"])
def test_zeroing_select_of_tied_weights_equals_torch_path(device, weights, force_miss):
    # the CrAM step's select: pruned weights zeroed in place (rho = 0: w unmoved)
    tensors = shaped(WEIGHTS[weights](), device)
    expected = magnitude_masks([t.cpu() for t in tensors], 0.5, kernels=False)
    zeroed = [t.cpu() * m for t, m in zip(tensors, expected)]
    groups, counts = selection_groups(tensors, 0.5, "global")
    masks = [torch.empty_like(t, dtype=torch.bool) for t in tensors]
    perturb = triton_select.Perturbation([torch.zeros_like(t) for t in tensors],
                                         [torch.empty_like(t) for t in tensors], None,
                                         [0.0] * len(tensors))
    triton_select.select(tensors, groups, counts, masks, zero=True, perturb=perturb,
                         method="bracket", force_miss=force_miss)
    for x, y, mask, t in zip(expected, zeroed, masks, tensors):
        assert torch.equal(x, mask.cpu()) and torch.equal(y, t.cpu())
    assert int(plan_of(tensors).workspace.misses) == int(force_miss)


def test_layouts_beyond_int32_offsets_take_the_radix_path(monkeypatch):
    # the route a layout of over 2**31 elements takes, at a limit small enough to run here:
    # these three tensors are three chunks, one more than the limit lets the bracket address
    monkeypatch.setattr(triton_bracket, "MAX_ELEMENTS", 2 * triton_bracket.BLOCK)
    tensors = shaped(torch.randn(680), "cpu")
    groups, counts = selection_groups(tensors, 0.5, "global")
    masks = [torch.empty_like(t, dtype=torch.bool) for t in tensors]
    with pytest.raises(ValueError, match="at most 2\\*\\*31 elements"):
        triton_select.select(tensors, groups, counts, masks, zero=False, method="bracket")
    triton_select.select(tensors, groups, counts, masks, zero=False)
    assert getattr(triton_select.layout(tensors, groups, triton_select.BLOCK), "bracket",
                   None) is None
    assert_masks_equal_torch_path(tensors, masks, 0.5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("force_miss", [False, True], ids=["fast_path", "forced_miss"])
def test_ties_scanned_across_the_chunks_of_one_tensor(device, force_miss):
    # 5 chunks of one channels_last tensor, 90 % exact zeros: a chunk's memory-order keys are not
    # its row-major ones, and the ties to keep start in a middle chunk
    w = already_pruned(1, n=64 * 32 * 9).reshape(64, 32, 3, 3)
    tensors = [w.contiguous(memory_format=torch.channels_last).to(device)]
    groups, counts = selection_groups(tensors, 0.5, "global")
    masks = [torch.empty_like(tensors[0], dtype=torch.bool)]
    triton_select.select(tensors, groups, counts, masks, zero=False, method="bracket",
                         force_miss=force_miss)
    assert_masks_equal_torch_path(tensors, masks, 0.5)
    space = plan_of(tensors).workspace
    assert int(space.misses) == int(force_miss)
    assert space.state.cpu()[triton_bracket._PARTIAL] == 1
    assert_clean(space)
