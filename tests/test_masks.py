"""The mask library: exact counts, the tie rule, determinism, layouts, N:M groups."""
import pytest
import torch
from torch import nn

from ffcv_cram.sparsity.masks import (magnitude_masks, nm_masks, prunable_weights, prune_count)


def sorted_reference(tensors, sparsity):
    """Independent global mask: stable sort of |w| in (tensor, logical index) order."""
    flat = torch.cat([t.detach().abs().reshape(-1).double() for t in tensors])
    k = prune_count(flat.numel(), sparsity)
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[torch.sort(flat, stable=True).indices[:k]] = False
    out, start = [], 0
    for t in tensors:
        out.append(keep[start:start + t.numel()].view(t.shape))
        start += t.numel()
    return out


def nm_reference(t, n, m):
    """Independent N:M mask: stable sort inside each group of M along (out, kh, kw, in)."""
    ordered = t.detach().movedim(1, -1) if t.dim() > 2 else t.detach()
    groups = ordered.abs().reshape(-1, m).double()
    keep = torch.ones_like(groups, dtype=torch.bool)
    idx = torch.sort(groups, dim=1, stable=True).indices[:, : m - n]
    keep.scatter_(1, idx, False)
    keep = keep.view(ordered.shape)
    return keep.movedim(-1, 1) if t.dim() > 2 else keep


SHAPES = [(7,), (16, 3, 3, 3), (10, 20), (1, 1), (64, 32, 1, 1), (5, 7, 3)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.7, 0.9, 0.95, 0.999])
def test_global_matches_sorted_reference(dtype, sparsity):
    tensors = [torch.randn(s).to(dtype) for s in SHAPES]
    masks = magnitude_masks(tensors, sparsity, "global")
    n = sum(t.numel() for t in tensors)
    assert all(m.dtype == torch.bool and m.shape == t.shape for m, t in zip(masks, tensors))
    assert sum(int((~m).sum()) for m in masks) == prune_count(n, sparsity)
    for got, want in zip(masks, sorted_reference(tensors, sparsity)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_uniform_prunes_each_tensor_exactly(sparsity):
    tensors = [torch.randn(s) for s in SHAPES]
    masks = magnitude_masks(tensors, sparsity, "uniform")
    for t, m in zip(tensors, masks):
        assert int((~m).sum()) == prune_count(t.numel(), sparsity)
        assert torch.equal(m, sorted_reference([t], sparsity)[0])


def test_ties_lowest_index_pruned_first_across_tensors():
    a, b = torch.full((3, 4), 0.5), torch.full((2, 5), -0.5)  # 22 equal magnitudes
    masks = magnitude_masks([a, b], 0.5)  # prune 11: all 12 of a but one... the first 11 by index
    assert int((~masks[0]).sum()) == 11 and bool(masks[0].reshape(-1)[-1])
    assert bool(masks[1].all())


def test_zeros_negative_zeros_and_last_bit_neighbours():
    x = torch.tensor([0.0, -0.0, 1.0, torch.nextafter(torch.tensor(1.0), torch.tensor(2.0)).item(),
                      -1.0, 0.0, -0.0, 3.0, 1.0, -torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)).item()])
    for s in [0.1, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]:
        got = magnitude_masks([x], s)[0]
        assert torch.equal(got, sorted_reference([x], s)[0]), s
    # the four zeros (either sign) go first, then the value just below 1.0
    assert torch.equal(~magnitude_masks([x], 0.5)[0],
                       torch.tensor([1, 1, 0, 0, 0, 1, 1, 0, 0, 1], dtype=torch.bool))


def test_exact_counts_many_sizes():
    g = torch.Generator().manual_seed(1)
    for n in [1, 2, 3, 10, 99, 1000, 4099, 65537]:
        t = torch.randn(n, generator=g).round(decimals=2)  # many ties
        for s in [0.0, 0.05, 0.33, 0.5, 0.77, 0.99]:
            m = magnitude_masks([t], s)[0]
            assert int((~m).sum()) == prune_count(n, s)
            assert torch.equal(m, sorted_reference([t], s)[0])


def test_deterministic_and_layout_independent():
    conv = torch.randn(32, 16, 3, 3).round(decimals=1)
    other = torch.randn(50, 16)
    first = magnitude_masks([conv, other], 0.7)
    again = magnitude_masks([conv.clone(), other.clone()], 0.7)
    cl = conv.contiguous(memory_format=torch.channels_last)
    transposed = other.t().contiguous().t()  # non-contiguous view, same values
    laid_out = magnitude_masks([cl, transposed], 0.7)
    for a, b, c in zip(first, again, laid_out):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert laid_out[0].is_contiguous(memory_format=torch.channels_last)


def test_invalid_arguments():
    t = [torch.randn(10)]
    for bad in [1.0, -0.1, 1.5]:
        with pytest.raises(ValueError, match="sparsity"):
            magnitude_masks(t, bad)
    with pytest.raises(ValueError, match="scope"):
        magnitude_masks(t, 0.5, "layerwise")
    with pytest.raises(ValueError, match="dtype"):
        magnitude_masks([torch.randn(3), torch.randn(3, dtype=torch.float64)], 0.5)
    with pytest.raises(ValueError, match="N must"):
        nm_masks(t, 5, 4)
    with pytest.raises(ValueError, match="M must"):
        nm_masks(t, 0, 0)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (0, 2), (3, 3)])
def test_nm_masks_match_reference(n, m):
    shapes = [(16, 8, 3, 3), (12, 16), (8, 8, 1, 1), (5, 3, 3, 3), (9,)]
    tensors = [torch.randn(s).round(decimals=1) for s in shapes]
    masks = nm_masks(tensors, n, m)
    for t, mask in zip(tensors, masks):
        if t.dim() < 2 or t.numel() % m:
            assert mask is None
            continue
        assert mask.dtype == torch.bool and mask.shape == t.shape
        assert torch.equal(mask, nm_reference(t, n, m))
        ordered = mask.movedim(1, -1) if t.dim() > 2 else mask
        assert bool((ordered.reshape(-1, m).sum(1) == n).all())  # exactly N kept per group


def test_nm_groups_are_consecutive_input_channels():
    w = torch.zeros(2, 8, 1, 1)
    w[0, :, 0, 0] = torch.tensor([1., 8., 2., 7., 3., 6., 4., 5.])
    w[1, :, 0, 0] = torch.arange(8, 0, -1).float()
    m = nm_masks([w], 2, 4)[0]
    assert m[0, :, 0, 0].tolist() == [False, True, False, True, False, True, False, True]
    assert m[1, :, 0, 0].tolist() == [True, True, False, False, True, True, False, False]
    cl = nm_masks([w.contiguous(memory_format=torch.channels_last)], 2, 4)[0]
    assert torch.equal(cl, m)


def test_prunable_weights_module_order_and_names():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Sequential(nn.Conv1d(4, 4, 1), nn.Linear(4, 2)))
    names = [name for name, _, _ in prunable_weights(model)]
    assert names == ["0.weight", "3.0.weight", "3.1.weight"]
    model[3][1].weight = model[0].weight  # a tied weight is listed once
    assert len(prunable_weights(model)) == 2


def test_prune_count_rounds_half_up():
    assert prune_count(10, 0.25) == 3 and prune_count(10, 0.24) == 2 and prune_count(3, 0.5) == 2
    assert prune_count(25502912, 0.9) == 22952621
