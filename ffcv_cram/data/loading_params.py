"""The `data` options both command lines share (how images are loaded), declared once.

train_cifar.py / train_imagenet.py and eval_sparse.py each add their own datasets to these; the
loaders of a run are then built from the section with `LoaderOptions.from_data_section`.
Importable before torch (the command lines declare their options first).
"""
from __future__ import annotations

from fastargs import Param
from fastargs.validation import OneOf

from ..config import Flag, IntRange
from .decode_choice import DECODES, GPU_PREFETCH_DEFAULT, JPEG_DECODER_DEFAULT, JPEG_DECODERS
from .normalisation import CIFAR_INPUTS

TASKS = ("training", "evaluation")


def loading_params(task: str) -> dict[str, Param]:
    """The shared `data` params, their help worded for `task` ('training' or 'evaluation')."""
    if task not in TASKS:
        raise ValueError(f"task={task!r}: must be one of {', '.join(TASKS)}")
    training = task == "training"
    return dict(
        num_workers=Param(IntRange(0), "threads per loader (0: usable cores / processes per node)",
                          default=0),
        in_memory=Param(Flag(), "keep the whole .beton in the OS page cache" if training else
                        "keep the datasets in the OS page cache", default=True),
        decode=Param(OneOf(DECODES), "JPEG decode + augmentation: cpu (FFCV) | gpu (nvJPEG) | "
                     f"auto (gpu when {'training' if training else 'evaluating'} on CUDA)",
                     default="cpu"),
        jpeg_decoder=Param(OneOf(JPEG_DECODERS), "with decode=gpu: auto (torchvision's nvJPEG, "
                           "else TorchCodec, else nvImageCodec) | torchvision | torchcodec | "
                           "nvimgcodec | cpu", default=JPEG_DECODER_DEFAULT),
        gpu_prefetch=Param(IntRange(1), "with decode=gpu: batches prepared ahead"
                           + (" of training" if training else ""), default=GPU_PREFETCH_DEFAULT),
        cifar_inputs=Param(OneOf(CIFAR_INPUTS), _CIFAR_INPUTS_HELP[task], default="reference"),
    )


# the evaluation takes the training run's value when it is not given
_CIFAR_INPUTS_HELP = {
    "training": "cifar style: reference (the CrAM reference's std 0.2023,0.1994,0.2010, translate "
                "padded with black) | cifar10_std (CIFAR-10's std 0.2470,0.2435,0.2616, padded with "
                "the mean: runs of ffcv-cram before 0.2023 became the default)",
    "evaluation": "cifar style: reference (the CrAM reference's std 0.2023,0.1994,0.2010) | "
                  "cifar10_std (0.2470,0.2435,0.2616: ffcv-cram runs before the reference's became "
                  "the default) (unset: the training run's)",
}
