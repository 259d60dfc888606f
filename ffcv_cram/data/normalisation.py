"""Per-channel mean and std of each data style, on the 0-255 pixel scale: the one place the CPU
pipeline (FFCV's NormalizeImage), the GPU paths (`device_batches`, the Triton crop kernel) and the
CIFAR padding value take them from.

CIFAR: the CrAM reference's constants (its utils/datasets.py), std (0.2023, 0.1994, 0.2010) --
not CIFAR-10's per-channel std (0.2470, 0.2435, 0.2616), but the scale its models were trained
and pruned at: inputs about 18 % larger than with the true std, which changes how a global
magnitude threshold spreads over the layers, and the scale a reference checkpoint expects.
`cifar_inputs='cifar10_std'` gives what ffcv-cram used before (the true std, the translate padded
with the mean), for runs trained then. Importable before torch (the command lines declare
their choices first).
"""
from __future__ import annotations

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
CIFAR_MEAN = (0.4914 * 255, 0.4822 * 255, 0.4465 * 255)
CIFAR_STD = (0.2023 * 255, 0.1994 * 255, 0.2010 * 255)
CIFAR10_TRUE_STD = (0.2470 * 255, 0.2435 * 255, 0.2616 * 255)
CIFAR_INPUTS = ("reference", "cifar10_std")


def style_constants(style: str, cifar_inputs: str = "reference") -> tuple[tuple, tuple, bool]:
    """(mean, std, whether the CIFAR translate pads with black) of a data style."""
    if cifar_inputs not in CIFAR_INPUTS:
        raise ValueError(f"cifar_inputs={cifar_inputs!r}: must be one of {', '.join(CIFAR_INPUTS)}")
    if style == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD, False
    if cifar_inputs == "reference":
        return CIFAR_MEAN, CIFAR_STD, True
    return CIFAR_MEAN, CIFAR10_TRUE_STD, False  # padded with zeros: the mean, once normalised


def normalised_black(mean, std, device=None):
    """(3,) float32: a black pixel after normalisation, (0 - mean) / std, the padding of the
    CIFAR crop (the reference pads with black before it normalises)."""
    import torch
    mean = torch.as_tensor(mean, dtype=torch.float32, device=device)
    return (0 - mean) / torch.as_tensor(std, dtype=torch.float32, device=device)
