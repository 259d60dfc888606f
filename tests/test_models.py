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


def test_blurpool_keeps_state_dict_and_blurs_strided_convs():
    plain = get_model("resnet50", 1000)
    blurred = get_model("resnet50", 1000, blurpool=True)
    assert plain.state_dict().keys() == blurred.state_dict().keys()
    blurred.load_state_dict(plain.state_dict())
    from ffcv_cram.models.blurpool import BlurConv2d
    swapped = [n for n, m in blurred.named_modules() if isinstance(m, BlurConv2d)]
    assert "layer2.0.conv2" in swapped and "conv1" not in swapped  # stem has 3 input channels
    x = torch.randn(1, 3, 64, 64)
    plain.eval(), blurred.eval()
    assert not torch.allclose(plain(x), blurred(x))
    conv = BlurConv2d(16, 4, 3, stride=2, padding=1, bias=False)
    # zero padding, as ffcv-imagenet's BlurPoolConv2d: a flat image darkens at the border
    # (edge: 12/16 of the taps inside, corner: 9/16)
    expected = torch.ones(8, 8)
    expected[0, :] = expected[-1, :] = expected[:, 0] = expected[:, -1] = 0.75
    expected[0, 0] = expected[0, -1] = expected[-1, 0] = expected[-1, -1] = 0.5625
    assert torch.equal(conv._blur(torch.ones(1, 16, 8, 8)), expected.expand(1, 16, 8, 8))
