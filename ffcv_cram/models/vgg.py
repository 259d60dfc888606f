"""VGG-16 for 32x32 inputs (conv with bias, BN, ReLU; one Linear(512, classes)): 14.73 M parameters."""
from torch import nn

_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, cfg=_VGG16, num_classes: int = 10):
        super().__init__()
        layers, in_ch = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_ch, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                in_ch = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_ch, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def vgg16_cifar(num_classes: int = 10) -> VGG:
    return VGG(_VGG16, num_classes)
