"""Model registry and the published parameter counts."""
import pytest
import torch

from ffcv_cram.models import get_model


@pytest.mark.parametrize("name,count", [("resnet20", 272_474), ("resnet18_cifar", 11_173_962),
                                        ("vgg16_cifar", 14_728_266)])
def test_cifar_models_parameter_counts_and_forward(name, count):
    model = get_model(name, 10)
    assert sum(p.numel() for p in model.parameters()) == count
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_torchvision_models_and_unknown_names():
    assert sum(p.numel() for p in get_model("resnet50", 1000).parameters()) == 25_557_032
    assert get_model("resnet18", 7).fc.out_features == 7
    with pytest.raises(ValueError, match="unknown"):
        get_model("resnet21", 10)
