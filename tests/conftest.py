"""Test environment: offline wandb, Triton kernels in the CPU interpreter, deterministic torch.
Session-wide fixtures: the reduced demo (real datasets and training runs), a small generated
dataset for the trainers' tests, and `run_main`, which runs a command-line tool in this process."""
import os
import runpy
import shutil
import signal
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
# under pytest-xdist each worker (and what it starts) gets its share of the cores: torch's OpenMP
# threads spinning against another worker's cost several times their work (ffcv_cram.data.threads)
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    share = max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(share))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


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


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """Generated shapes, 4 classes: train.beton (192 images), val.beton (32) and val_odd.beton
    (31: two processes get shards of 16 and 15)."""
    from ffcv_cram.data.convert import convert
    from ffcv_cram.data.synthetic import generate
    base = tmp_path_factory.mktemp("train_data")
    generate(base / "shapes", classes=4, train_per_class=48, val_per_class=8, size=32, workers=1)
    shutil.copytree(base / "shapes" / "val", base / "shapes" / "val_odd")
    min((base / "shapes" / "val_odd").rglob("*.jpg")).unlink()
    paths = {}
    for key, split in (("train", "train"), ("val", "val"), ("val_odd", "val")):
        paths[key] = str(base / f"{key}.beton")
        convert("folder", split, str(base / "shapes" / key), paths[key], num_workers=1,
                progress=False)
    return paths


@pytest.fixture
def run_main(capsys):
    """run_main(script, *argv) runs `script`'s main(argv) (train_cifar.py, eval_sparse.py, ...) in
    this process, as its command line would, with a fresh fastargs configuration: returns
    (exit status, stdout, stderr). A refusal costs no interpreter start and no imports."""
    from fastargs import set_current_config
    from fastargs.config import Config

    def run(script, *argv):
        sigterm = signal.getsignal(signal.SIGTERM)
        set_current_config(Config())
        capsys.readouterr()
        try:
            main = runpy.run_path(str(ROOT / script), run_name="cli")["main"]
            code = main(list(argv))
        except SystemExit as stop:
            code = 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 1
        finally:
            signal.signal(signal.SIGTERM, sigterm)
            set_current_config(Config())
        out, err = capsys.readouterr()
        return code, out, err
    return run


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """The demo's whole pipeline in a reduced size (this is also the demo's own test): generated
    data, two real training runs (runs/cram, runs/sgd) and a sweep. Returns (folder, stdout)."""
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = subprocess.run([sys.executable, "-m", "ffcv_cram.demo", "--quick", "--out", str(out),
                           "--device", "cpu"], capture_output=True, text=True, timeout=1200,
                          cwd=ROOT, env={**os.environ, "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout
