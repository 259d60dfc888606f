"""Batch-norm tuning: statistics re-estimated, weights untouched, modes restored."""
import pytest
import torch

from ffcv_cram.sparsity import prune_model, tune_batchnorm
from nets import SmallConvNet


def calibration(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(2.0 + 3.0 * torch.randn(16, 3, 6, 6, generator=g), torch.zeros(16)) for _ in range(n)]


def test_bnt_recomputes_statistics_and_keeps_pruned_weights_zero():
    model = SmallConvNet()
    masks, _ = prune_model(model, "global", 0.8)
    weights = {k: v.clone() for k, v in model.named_parameters()}
    used = tune_batchnorm(model, calibration(), num_batches=12)  # cycles over 5 batches
    assert used == 12 and not model.training
    for name, p in model.named_parameters():
        assert torch.equal(p, weights[name])
    for name, mask in masks.items():
        assert bool((dict(model.named_parameters())[name][~mask] == 0).all())
    assert int(model.bn1.num_batches_tracked) == 12
    assert model.bn1.momentum == 0.1  # restored
    assert model.bn1.running_mean.abs().sum() > 0


def test_cumulative_average_equals_mean_of_batch_means():
    model = SmallConvNet()
    data = calibration(4)
    tune_batchnorm(model, data, num_batches=4, momentum=None)
    with torch.no_grad():
        means = torch.stack([model.conv1(x).mean((0, 2, 3)) for x, _ in data])
    assert torch.allclose(model.bn1.running_mean, means.mean(0), atol=1e-5)
    assert model.bn1.momentum == 0.1


def test_one_shot_iterator_used_until_exhausted_and_empty_data_refused():
    model = SmallConvNet()
    assert tune_batchnorm(model, iter(calibration(3)), num_batches=10) == 3
    with pytest.raises(ValueError, match="no batch"):
        tune_batchnorm(model, [], num_batches=2)
    with pytest.raises(ValueError, match="num_batches"):
        tune_batchnorm(model, calibration(), num_batches=0)
