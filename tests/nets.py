"""Small models shared by the tests."""
import torch
from torch import nn


class SmallConvNet(nn.Module):
    """Conv + BN net with an ungroupable conv (5 x 3 x 3 x 3 = 135 weights) and a Linear head."""

    def __init__(self, classes: int = 4, batchnorm: bool = True):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if batchnorm else (lambda c: nn.Identity())
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = norm(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = norm(8)
        self.conv3 = nn.Conv2d(8, 5, 1, bias=False)  # 40 weights: groups of 4 and 8
        self.odd = nn.Conv2d(5, 3, 3, padding=1, bias=False)  # 135 weights: cannot be grouped
        self.fc = nn.Linear(3, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.odd(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


def batch(n=6, classes=4, size=6, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, size, size, generator=g, dtype=dtype),
            torch.randint(0, classes, (n,), generator=g))


def separable_task(n=256, classes=4, size=8, seed=0):
    """A learnable problem: the class sets which quadrant of the image is bright."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = 0.3 * torch.randn(n, 3, size, size, generator=g)
    h = size // 2
    for c in range(classes):
        r, q = divmod(c, 2)
        x[y == c, :, r * h:(r + 1) * h, q * h:(q + 1) * h] += 1.0
    return x, y
