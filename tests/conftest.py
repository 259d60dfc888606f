"""Test environment: offline wandb, Triton kernels in the CPU interpreter, deterministic torch."""
import os

import pytest
import torch  # does not import triton

# must be set before triton or wandb is imported anywhere. Without a GPU, Triton kernels run in
# its CPU interpreter; with one they compile (the interpreter cannot read device memory)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)
