"""Models: CIFAR ResNets and VGG, and a registry that also serves torchvision models."""
from .registry import available_models, get_model
from .resnet_cifar import resnet18_cifar, resnet20
from .vgg import vgg16_cifar

__all__ = ["get_model", "available_models", "resnet20", "resnet18_cifar", "vgg16_cifar"]
