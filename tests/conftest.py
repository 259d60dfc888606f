"""Test environment: offline wandb, Triton kernels in the CPU interpreter, deterministic torch; the
reduced demo (real datasets and training runs), shared by the tests of eval_sparse.py."""
import os
import subprocess
import sys
from pathlib import Path

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


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """The demo's whole pipeline in a reduced size (this is also the demo's own test): generated
    data, two real training runs (runs/cram, runs/sgd) and a sweep. Returns (folder, stdout)."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = subprocess.run([sys.executable, "-m", "ffcv_cram.demo", "--quick", "--out", str(out),
                           "--device", "cpu"], capture_output=True, text=True, timeout=1200,
                          cwd=root, env={**os.environ, "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout
