"""CrAM's scope='uniform' is the reference's unif_prune=True: each compressed tensor pruned to the
drawn sparsity, the first conv and the classifier left dense (global: every Conv/Linear weight)."""
import pytest
import torch
from torch import nn

from ffcv_cram import TopkCrAM
from ffcv_cram.models import get_model
from ffcv_cram.train.loop import _uniform_dense
from nets import SmallConvNet, batch


def compressed_point(scope=None, kernels=False, **kwargs):
    """The weights at C(w + e) after CrAM's first step at sparsity 0.5, with w + e beside."""
    torch.manual_seed(0)
    model = SmallConvNet(batchnorm=False)
    opt = TopkCrAM(model.parameters(), torch.optim.SGD, rho=0.05, sparsities=(0.5,), lr=0.1,
                   kernels=kernels, **({} if scope is None else {"scope": scope}), **kwargs)
    x, y = batch(n=8, dtype=torch.float32)
    nn.functional.cross_entropy(model(x), y).backward()
    perturbed = {n: (p + 0.05 * p.grad).detach() for n, p in model.named_parameters()}
    opt.first_step(zero_grad=True)
    return model, perturbed


def zeros(p):
    return int((p == 0).sum())


@pytest.mark.parametrize("kernels", [False, True], ids=["torch", "fused"])
def test_uniform_leaves_first_conv_and_classifier_dense(kernels):
    model, perturbed = compressed_point("uniform", kernels)
    for name in ("conv1.weight", "fc.weight"):
        assert torch.equal(dict(model.named_parameters())[name], perturbed[name])
    for name in ("conv2.weight", "conv3.weight", "odd.weight"):
        p = dict(model.named_parameters())[name]
        assert zeros(p) == round(0.5 * p.numel())  # each tensor to the drawn sparsity


def test_unif_prune_is_uniform_and_global_compresses_every_weight():
    uniform, _ = compressed_point(unif_prune=True)
    reference, _ = compressed_point("uniform")
    assert all(torch.equal(a, b) for a, b in zip(uniform.parameters(), reference.parameters()))
    model, _ = compressed_point("global")
    weights = [p for p in model.parameters() if p.dim() > 1]
    assert zeros(model.conv1.weight) > 0 and zeros(model.fc.weight) > 0
    assert sum(zeros(p) for p in weights) == round(0.5 * sum(p.numel() for p in weights))


def test_dense_tensors_are_chosen_explicitly_and_only_with_uniform():
    probe = SmallConvNet(batchnorm=False)
    with pytest.raises(ValueError, match="dense: only with scope='uniform'"):
        TopkCrAM(probe.parameters(), torch.optim.SGD, scope="global", dense=[probe.conv1.weight], lr=0.1)
    torch.manual_seed(0)
    model = SmallConvNet(batchnorm=False)
    opt = TopkCrAM(model.parameters(), torch.optim.SGD, scope="uniform", sparsities=(0.5,),
                   dense=[model.odd.weight], lr=0.1, kernels=False)
    x, y = batch(n=8, dtype=torch.float32)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.first_step(zero_grad=True)
    assert zeros(model.odd.weight) == 0 and zeros(model.conv1.weight) == round(0.5 * 8 * 27)


def test_the_trainer_leaves_first_conv_and_last_linear_dense_by_module_type():
    model = get_model("resnet20", 10)
    assert _uniform_dense(model, "global") is None
    assert [id(p) for p in _uniform_dense(model, "uniform")] == [id(model.conv1.weight),
                                                                 id(model.fc.weight)]
