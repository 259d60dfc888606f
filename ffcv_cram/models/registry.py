"""Model names -> constructors: our CIFAR models, then any torchvision classification model."""
from typing import Callable

import torchvision
from torch import nn

from .blurpool import add_blurpool
from .resnet_cifar import resnet18_cifar, resnet20
from .vgg import vgg16_cifar

CIFAR_MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet18_cifar": resnet18_cifar,
    "vgg16_cifar": vgg16_cifar,
}


def available_models() -> list[str]:
    return sorted(CIFAR_MODELS) + sorted(torchvision.models.list_models(torchvision.models))


def get_model(name: str, num_classes: int = 1000, blurpool: bool = False) -> nn.Module:
    """A freshly initialised model: `resnet20`, `resnet18_cifar`, `vgg16_cifar`, or a torchvision
    classification model such as `resnet50` (untrained weights); optionally with BlurPool."""
    if name in CIFAR_MODELS:
        model = CIFAR_MODELS[name](num_classes=num_classes)
    elif name in torchvision.models.list_models(torchvision.models):
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    else:
        raise ValueError(f"model {name!r}: unknown; choose one of {', '.join(available_models())}")
    return add_blurpool(model) if blurpool else model
