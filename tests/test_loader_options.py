"""The loader options of a run: built once from a command line's data section, each bad value
refused when the object is built, and the choice module that the command lines read first
importing nothing (no cycle with the decoders)."""
import ast
import dataclasses
from pathlib import Path

import pytest

from ffcv_cram.data import decode_choice
from ffcv_cram.data.loader_options import (DecodeVariants, GpuDecodeOptions, LoaderError,
                                           LoaderOptions)
from ffcv_cram.data.loading_params import loading_params


def test_options_come_from_the_data_section_with_defaults_for_missing_keys():
    section = {"train_dataset": "t.beton", "num_workers": 3, "in_memory": False, "decode": "gpu",
               "jpeg_decoder": "torchvision", "gpu_prefetch": 4, "cifar_inputs": "cifar10_std"}
    options = LoaderOptions.from_data_section(section, style="cifar", num_workers=5, rank=1,
                                              world_size=2)
    assert options == LoaderOptions(style="cifar", num_workers=5, in_memory=False, decode="gpu",
                                    gpu=GpuDecodeOptions("torchvision", 4),
                                    cifar_inputs="cifar10_std", rank=1, world_size=2)
    assert LoaderOptions.from_data_section({"decode": "auto"}) == LoaderOptions(decode="auto")
    assert options.gpu.variants == DecodeVariants()  # benchmarks only: never from a section


def test_the_declared_defaults_are_the_options_defaults():
    for task in ("training", "evaluation"):
        declared = {key: param.default for key, param in loading_params(task).items()}
        assert LoaderOptions.from_data_section(declared) == LoaderOptions()


@pytest.mark.parametrize("fields,message", [
    (dict(style="svhn"), "style='svhn': must be one of imagenet, cifar"),
    (dict(decode="nvjpeg"), "decode='nvjpeg': must be one of cpu, gpu, auto"),
    (dict(jpeg_decoder="nvjpeg"), "jpeg_decoder='nvjpeg': must be one of auto, nvimgcodec"),
    (dict(gpu_prefetch=0), "gpu_prefetch=0: must be >= 1"),
    (dict(cifar_inputs="x"), "cifar_inputs='x': must be one of reference, cifar10_std"),
])
def test_each_bad_value_is_refused_when_built(fields, message):
    with pytest.raises(LoaderError, match=message):
        LoaderOptions.from_data_section(fields)


def test_options_are_frozen():
    options = LoaderOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.decode = "gpu"
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.gpu.prefetch = 0


def test_the_choice_module_imports_nothing_when_loaded():
    tree = ast.parse(Path(decode_choice.__file__).read_text())
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert [node.module for node in imports] == ["__future__"]
