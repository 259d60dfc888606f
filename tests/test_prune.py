"""One-shot pruning: exact counts per method, excluded layers, N:M validity, the report."""
import pytest
import torch
from torch import nn

from ffcv_cram.models import get_model
from ffcv_cram.sparsity import prune_count, prune_model, prunable_weights
from nets import SmallConvNet


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.95])
def test_global_prunes_exactly_over_all_conv_and_linear(sparsity):
    model = get_model("resnet20", 10)
    masks, report = prune_model(model, "global", sparsity)
    weights = prunable_weights(model)
    total = sum(p.numel() for _, _, p in weights)
    assert report.prunable_sparsity == report.pruned_sparsity == prune_count(total, sparsity) / total
    assert set(masks) == {name for name, _, _ in weights} and report.dense_layers == []
    for name, _, p in weights:  # zeros exactly where the masks say
        assert torch.equal(p != 0, masks[name])
    others = [p for n, p in model.named_parameters() if n not in masks]  # biases, BN
    assert report.model_numel == total + sum(p.numel() for p in others)
    assert report.model_zeros == prune_count(total, sparsity) + sum(int((p == 0).sum()) for p in others)


def test_uniform_skips_first_conv_and_last_linear():
    model = get_model("resnet20", 10)
    first, last = model.conv1.weight.clone(), model.fc.weight.clone()
    masks, report = prune_model(model, "uniform", 0.7)
    assert torch.equal(model.conv1.weight, first) and torch.equal(model.fc.weight, last)
    assert report.dense_layers == ["conv1.weight", "fc.weight"]
    for layer in report.layers:
        if layer.pruned:
            assert layer.zeros == prune_count(layer.numel, 0.7)
    assert "conv1.weight" not in masks and "fc.weight" not in masks


def test_uniform_chooses_layers_by_type_and_order_not_parameter_position():
    class HeadFirst(nn.Module):  # the Linear is registered before the convs
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 2)
            self.stem = nn.Conv2d(3, 4, 3)
            self.body = nn.Conv2d(4, 4, 3)

        def forward(self, x):
            return self.head(self.body(self.stem(x)).mean((2, 3)))
    model = HeadFirst()
    masks, report = prune_model(model, "uniform", 0.5)
    assert list(masks) == ["body.weight"]


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_pattern_valid_everywhere_and_ungroupable_reported(n, m):
    model = SmallConvNet()
    masks, report = prune_model(model, "nm", nm=(n, m))
    ungroupable = [name for name, _, p in prunable_weights(model) if p.numel() % m]
    assert report.dense_layers == ungroupable and "odd.weight" in ungroupable
    assert report.pattern == f"{n}:{m}"
    for name, _, p in prunable_weights(model):
        if name in masks:
            groups = (p.movedim(1, -1) if p.dim() > 2 else p).reshape(-1, m)
            assert bool(((groups != 0).sum(1) <= n).all())
    assert report.pruned_sparsity == pytest.approx(1 - n / m)
    assert report.target == pytest.approx(1 - n / m)


def test_report_as_dict_and_bad_arguments():
    model = SmallConvNet()
    _, report = prune_model(model, "global", 0.5)
    data = report.to_dict()
    assert data["method"] == "global" and 0 < data["model_sparsity"] < data["prunable_sparsity"]
    assert len(data["layers"]) == 5
    with pytest.raises(ValueError, match="sparsity"):
        prune_model(model, "global", 1.0)
    with pytest.raises(ValueError, match="method"):
        prune_model(model, "random", 0.5)
    with pytest.raises(ValueError, match="N must"):
        prune_model(model, "nm", nm=(3, 2))
