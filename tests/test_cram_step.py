"""One optimizer step equals the update of SPEC §2 computed by hand (float64, <= 1e-10)."""
import copy
import itertools

import pytest
import torch
from torch import nn

from ffcv_cram import (SAM, NMTopkCrAM, TopkCrAM, disable_running_stats, enable_running_stats)
from nets import SmallConvNet, batch
from test_masks import nm_reference, sorted_reference

LR, MOMENTUM, WD, RHO = 0.1, 0.9, 1e-3, 0.05
loss_fn = nn.CrossEntropyLoss()


def grads_at(model, x, y, values=None, freeze_bn=False):
    """Gradient of the batch loss with the parameters set to `values` (BN frozen if asked)."""
    params = list(model.parameters())
    if values is not None:
        with torch.no_grad():
            for p, v in zip(params, values):
                p.copy_(v)
    model.zero_grad(set_to_none=True)
    if freeze_bn:
        disable_running_stats(model)
    loss_fn(model(x), y).backward()
    if freeze_bn:
        enable_running_stats(model)
    return [p.grad.clone() for p in params]


def uniform_reference(tensors, sparsity):
    """The reference's unif_prune: each tensor to the sparsity, but the first conv and the
    classifier (the first and last tensors of rank > 1) stay dense."""
    inner = [sorted_reference([t], sparsity)[0] for t in tensors[1:-1]]
    return [None, *inner, None]


def hand_update(model, batches, masks_fn, rho, plus, sparse_grad, grad_norm, ascent=True):
    """Apply SPEC §2 by hand for each batch, with SGD(momentum, weight decay) by hand."""
    params = list(model.parameters())
    bufs = [None] * len(params)
    for x, y in batches:
        w = [p.detach().clone() for p in params]
        g = grads_at(model, x, y)  # BN stats updated here, as in the first pass
        scale = rho
        if grad_norm:
            scale = rho / (torch.sqrt(sum((gi ** 2).sum() for gi in g)) + 1e-12)
        v = [wi + scale * gi for wi, gi in zip(w, g)]
        prunable = [i for i, p in enumerate(params) if p.dim() > 1]
        masks = {}
        if masks_fn is not None:
            for i, m in zip(prunable, masks_fn([v[i] for i in prunable])):
                if m is not None:
                    masks[i] = m
                    v[i] = v[i] * m
        gc = grads_at(model, x, y, v, freeze_bn=True)
        d = []
        for i, gci in enumerate(gc):
            if sparse_grad and i in masks:
                gci = gci * masks[i]
            d.append(gci + g[i] if plus else gci)
        with torch.no_grad():
            for i, p in enumerate(params):
                step = d[i] + WD * w[i]
                bufs[i] = step.clone() if bufs[i] is None else MOMENTUM * bufs[i] + step
                p.copy_(w[i] - LR * bufs[i])
    return model


def run_optimizer(model, batches, make_opt):
    opt = make_opt(model.parameters())
    for x, y in batches:
        def closure():
            loss_fn(model(x), y).backward()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        disable_running_stats(model)
        opt.step(closure)
        enable_running_stats(model)
    return model, opt


def assert_same_state(a, b, tol=1e-10):
    for (name, t1), (_, t2) in zip(a.state_dict().items(), b.state_dict().items()):
        if t1.is_floating_point():
            assert (t1 - t2).abs().max() <= tol, name
        else:
            assert torch.equal(t1, t2), name


def two_batches():
    return [batch(seed=1), batch(seed=2)]


@pytest.mark.parametrize("plus,sparse_grad,scope,grad_norm",
                         list(itertools.product([False, True], [False, True],
                                                ["global", "uniform"], [False, True])))
def test_topk_cram_step_matches_hand_update(plus, sparse_grad, scope, grad_norm):
    model = SmallConvNet().double()
    expected = copy.deepcopy(model)
    sparsity = 0.6
    ref_masks = (lambda ts: sorted_reference(ts, sparsity)) if scope == "global" else (
        lambda ts: uniform_reference(ts, sparsity))
    hand_update(expected, two_batches(), ref_masks, RHO, plus, sparse_grad, grad_norm)
    run_optimizer(model, two_batches(), lambda ps: TopkCrAM(
        ps, torch.optim.SGD, rho=RHO, sparsities=[sparsity], plus_version=plus,
        sparse_grad=sparse_grad, scope=scope, grad_norm=grad_norm, lr=LR, momentum=MOMENTUM,
        weight_decay=WD))
    assert_same_state(model, expected)


@pytest.mark.parametrize("plus,sparse_grad", list(itertools.product([False, True], [False, True])))
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_nm_cram_step_matches_hand_update(plus, sparse_grad, n, m):
    model = SmallConvNet().double()
    expected = copy.deepcopy(model)

    def ref_masks(ts):
        return [nm_reference(t, n, m) if t.numel() % m == 0 else None for t in ts]
    hand_update(expected, two_batches(), ref_masks, RHO, plus, sparse_grad, grad_norm=False)
    model, opt = run_optimizer(model, two_batches(), lambda ps: NMTopkCrAM(
        ps, torch.optim.SGD, rho=RHO, patterns=[(n, m)], plus_version=plus,
        sparse_grad=sparse_grad, lr=LR, momentum=MOMENTUM, weight_decay=WD))
    assert opt.last_pattern == (n, m)
    assert_same_state(model, expected)


def test_sam_step_matches_hand_update():
    model = SmallConvNet().double()
    expected = copy.deepcopy(model)
    hand_update(expected, two_batches(), None, RHO, plus=False, sparse_grad=False, grad_norm=True)
    run_optimizer(model, two_batches(), lambda ps: SAM(
        ps, torch.optim.SGD, rho=RHO, lr=LR, momentum=MOMENTUM, weight_decay=WD))
    assert_same_state(model, expected)


def test_manual_first_and_second_step_equal_closure_step():
    a = SmallConvNet().double()
    b = copy.deepcopy(a)
    run_optimizer(a, two_batches(), lambda ps: TopkCrAM(ps, torch.optim.SGD, lr=LR, momentum=MOMENTUM))
    opt = TopkCrAM(b.parameters(), torch.optim.SGD, lr=LR, momentum=MOMENTUM)
    for x, y in two_batches():
        loss_fn(b(x), y).backward()
        opt.first_step(zero_grad=True)
        disable_running_stats(b)
        loss_fn(b(x), y).backward()
        enable_running_stats(b)
        opt.second_step(zero_grad=True)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_sparsity_draws_are_seeded_and_uniform():
    def draws(seed, steps=600):
        p = nn.Parameter(torch.randn(8, 8))
        opt = TopkCrAM([p], torch.optim.SGD, sparsities=(0.5, 0.7, 0.9), seed=seed, lr=0.0)
        out = []
        for _ in range(steps):
            p.grad = torch.randn(8, 8)
            opt.step(lambda: (p * torch.randn(8, 8)).sum().backward())
            out.append(opt.last_sparsity)
        return out
    a, b, c = draws(0), draws(0), draws(1)
    assert a == b and a != c
    for s in (0.5, 0.7, 0.9):
        assert 150 < a.count(s) < 250


def test_second_pass_changes_no_bn_buffer():
    model = SmallConvNet().double()
    x, y = batch()
    opt = TopkCrAM(model.parameters(), torch.optim.SGD, lr=LR)
    loss_fn(model(x), y).backward()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "tracked" in k}
    disable_running_stats(model)
    opt.step(lambda: loss_fn(model(x), y).backward())
    enable_running_stats(model)
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v), k
