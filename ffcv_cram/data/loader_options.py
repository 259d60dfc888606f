"""How a run's loaders load: small frozen option objects, each checked once when it is built.

`ImageLoader` takes what it reads (path, train, batch size, resolution, seed, order, subset) and
one `LoaderOptions`, shared by every loader of a run and built once from the `data` section of a
command line (`LoaderOptions.from_data_section`). Inside it, `GpuDecodeOptions` holds what only
decode='gpu' uses, and `DecodeVariants` the alternative GPU-path implementations that benchmarks
compare (training and evaluation keep their defaults).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .decode_choice import DECODES, GPU_PREFETCH_DEFAULT, JPEG_DECODER_DEFAULT, JPEG_DECODERS
from .normalisation import CIFAR_INPUTS

DEFAULT_CROP_RATIO = 224 / 256
STYLES = ("imagenet", "cifar")


class LoaderError(Exception):
    """A loader cannot be built from these arguments (one-line message)."""


def _one_of(name: str, value, choices) -> None:
    if value not in choices:
        raise LoaderError(f"{name}={value!r}: must be one of {', '.join(choices)}")


@dataclass(frozen=True)
class DecodeVariants:
    """For benchmarks: `crop_kernel` (None: the Triton crop kernel on CUDA, the reference on the
    CPU), `region_decode` (decode only the crop where the decoder can) and `sync_handover` (the
    earlier host-synchronised hand-over of batches)."""
    crop_kernel: bool | None = None
    region_decode: bool = True
    sync_handover: bool = False


@dataclass(frozen=True)
class GpuDecodeOptions:
    """decode='gpu': the JPEG decoder (`jpeg_decoders`; 'auto': on CUDA torchvision's nvJPEG, else
    TorchCodec, else nvImageCodec, one notice saying which; on a CPU device FFCV's libjpeg-turbo)
    and how many batches are prepared ahead of the caller (>= 1)."""
    jpeg_decoder: str = JPEG_DECODER_DEFAULT
    prefetch: int = GPU_PREFETCH_DEFAULT
    variants: DecodeVariants = field(default_factory=DecodeVariants)

    def __post_init__(self):
        _one_of("jpeg_decoder", self.jpeg_decoder, JPEG_DECODERS)
        if self.prefetch < 1:
            raise LoaderError(f"gpu_prefetch={self.prefetch}: must be >= 1")


@dataclass(frozen=True)
class LoaderOptions:
    """What every loader of a run shares. `style`, `cifar_inputs` and `crop_ratio`: see
    `ImageLoader`. `device`, `dtype`, `channels_last`: where and how batches come out.
    `num_workers` <= 0: this process's share of the usable cores (`threads.loader_threads`).
    `distributed`: rank and world size default to torch.distributed's (else 0 and 1)."""
    style: str = "imagenet"
    device: torch.device | str = "cpu"
    dtype: torch.dtype = torch.float32
    channels_last: bool = True
    num_workers: int = 0
    in_memory: bool = True
    decode: str = "cpu"
    gpu: GpuDecodeOptions = field(default_factory=GpuDecodeOptions)
    cifar_inputs: str = "reference"
    crop_ratio: float = DEFAULT_CROP_RATIO
    distributed: bool = False
    rank: int | None = None
    world_size: int | None = None

    def __post_init__(self):
        _one_of("style", self.style, STYLES)
        _one_of("decode", self.decode, DECODES)
        _one_of("cifar_inputs", self.cifar_inputs, CIFAR_INPUTS)

    @classmethod
    def from_data_section(cls, data: dict, **others) -> LoaderOptions:
        """The options a command line's `data` section sets (a key it lacks keeps its default),
        and `others` (device, sharding, ...; the trainer's style, which its section lacks), which
        take precedence."""
        gpu = {name: data[key] for name, key in (("jpeg_decoder", "jpeg_decoder"),
                                                  ("prefetch", "gpu_prefetch")) if key in data}
        taken = {key: data[key] for key in ("style", "num_workers", "in_memory", "decode",
                                            "cifar_inputs") if key in data}
        return cls(**{**taken, "gpu": GpuDecodeOptions(**gpu), **others})
