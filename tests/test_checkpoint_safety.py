"""A checkpoint file never runs code unless the user says they trust it; our own files load with
weights_only; a refused write keeps the previous file. Real pickles, real processes, real EFBIG."""
import json
import os
import random
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ffcv_cram import safe_load
from ffcv_cram.models import get_model
from ffcv_cram.models.checkpoints import load_state_dict
from ffcv_cram.train import checkpoint as ckpt
from indexed import write_indexed

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
CLASSES = 64


class RunsCode:
    """Unpickling this creates `marker`: what a crafted checkpoint does with a shell command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def weights(classes=CLASSES):
    return get_model("resnet20", classes).state_dict()


def script(name, *argv, limit_file_size=None, timeout=600):
    def limit():  # in the child only: writes past this size fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE,
                           (limit_file_size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return subprocess.run([sys.executable, str(ROOT / name), *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=ENV,
                          preexec_fn=limit if limit_file_size else None)


def assert_one_error_line(proc, *words):
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for word in words:
        assert word in errors[0], errors[0]


# -- loading -------------------------------------------------------------------------------------

def test_the_payload_does_run_code_when_fully_unpickled(tmp_path):
    """Without this, the refusals below could pass with a payload that does nothing."""
    marker = tmp_path / "ran"
    torch.save({"model_state_dict": weights(), "x": RunsCode(marker)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def test_a_file_that_would_run_code_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    path = str(tmp_path / "evil.pt")
    torch.save({"model_state_dict": weights(), "x": RunsCode(marker)}, path)
    with pytest.raises(safe_load.UnsafeFile) as refused:
        load_state_dict(path)
    assert refused.value.path == path and "exec" in refused.value.needs
    with pytest.raises(safe_load.UnsafeFile):
        ckpt.load_checkpoint(path)
    assert not marker.exists()


def _reference_checkpoint(path, numpy_module: bytes):
    """The reference CrAM format as its trainer writes it: a cosine schedule computed with np.cos,
    so the optimizer's and the scheduler's learning rates are np.float64. Written by the pickler
    of NumPy 1 (`numpy.core`) or NumPy 2 (`numpy._core`), whichever `numpy_module` says."""
    model = get_model("resnet20", 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: 0.5 * (1 + np.cos(np.pi * e / 10)))
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    scheduler.step()
    assert type(optimizer.param_groups[0]["lr"]) is np.float64  # what needs the allow-list
    state = {"epoch": 1, "model_config": {"arch": "resnet20", "dataset": "cifar10"},
             "model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
             "optimizer": {"state_dict": optimizer.state_dict()},
             "lr_scheduler": {"state_dict": scheduler.state_dict()}}
    # the legacy format keeps the pickle uncompressed, so the module name can be rewritten
    torch.save(state, path, _use_new_zipfile_serialization=False)
    data = Path(path).read_bytes()
    for written in (b"numpy._core.multiarray", b"numpy.core.multiarray"):
        data = data.replace(written, numpy_module + b".multiarray")
    Path(path).write_bytes(data)
    return model.state_dict()


@pytest.mark.parametrize("numpy_module", [b"numpy.core", b"numpy._core"])
def test_the_reference_format_loads_with_weights_only(tmp_path, numpy_module):
    path = str(tmp_path / "reference.pt")
    expected = _reference_checkpoint(path, numpy_module)
    assert numpy_module + b".multiarray\nscalar" in Path(path).read_bytes()
    with pytest.raises(Exception, match="Weights only load failed"):  # torch alone refuses it
        torch.load(path, weights_only=True)
    state = load_state_dict(path)
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in state)


def test_only_float64_numpy_scalars_are_allow_listed(tmp_path):
    for i, value in enumerate([np.float32(0.5), np.int64(3), np.zeros(2)]):
        torch.save({"model": weights(), "x": value}, tmp_path / f"{i}.pt")
        with pytest.raises(safe_load.UnsafeFile):
            safe_load.load(str(tmp_path / f"{i}.pt"))
    scalar = safe_load.NUMPY_FLOAT64[0]
    assert scalar(np.dtype("<f8"), np.float64(0.25).tobytes()) == 0.25
    for dtype, data in ((np.dtype("O"), b"\0" * 8), (np.dtype(">f8"), b"\0" * 8),
                        (np.dtype("<f8"), b"\0" * 9)):
        with pytest.raises(Exception, match="only float64"):
            scalar(dtype, data)


def _draws():
    return (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())


def test_rng_states_round_trip_through_weights_only(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached Gaussian: part of NumPy's state
    torch.save({"rng": ckpt.rng_state()}, tmp_path / "rng.pt")
    expected = _draws()
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert _draws() == expected
    old = {**ckpt.rng_state(), "numpy": np.random.get_state()}  # as checkpoints held it before
    expected = _draws()
    ckpt.set_rng_state(old)
    assert _draws() == expected


def test_an_old_checkpoint_of_ours_loads_only_when_trusted(tmp_path):
    path = str(tmp_path / "checkpoint_last.pt")
    torch.save({"format": ckpt.FORMAT, "model": weights(),
                "rng": {**ckpt.rng_state(), "numpy": np.random.get_state()}}, path)
    for load in (ckpt.load_checkpoint, load_state_dict):
        with pytest.raises(safe_load.UnsafeFile, match="numpy"):
            load(path)
        assert load(path, trusted=True)


# -- writing -------------------------------------------------------------------------------------

WRITE = """
import sys, torch
from ffcv_cram.atomic import AtomicWriteError, torch_save
try:
    torch_save({"w": torch.zeros(200_000)}, sys.argv[1])
except AtomicWriteError as err:
    print(err)
"""


def test_a_refused_write_keeps_the_previous_file(tmp_path):
    from ffcv_cram.atomic import torch_save
    path = tmp_path / "checkpoint_last.pt"
    torch_save({"w": torch.ones(10)}, str(path))
    before = path.read_bytes()
    proc = subprocess.run([sys.executable, "-c", WRITE, str(path)], capture_output=True, text=True,
                          cwd=ROOT, env={**ENV, "PYTHONPATH": str(ROOT)}, timeout=300,
                          preexec_fn=lambda: resource.setrlimit(
                              resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY)))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"{path}: cannot be written (File too large)" in proc.stdout, proc.stdout
    assert path.read_bytes() == before and os.listdir(tmp_path) == [path.name]  # no temporary left


# -- the command lines ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_indexed(tmp_path_factory.mktemp("safety") / "train.beton", CLASSES)


def train_args(dataset, folder, epochs, *extra):
    return [f"--data.train_dataset={dataset}", "--data.val_dataset=",
            f"--model.num_classes={CLASSES}", f"--logging.folder={folder}", f"--training.epochs={epochs}",
            "--training.global_batch_size=32", "--lr.scaling=none",
            "--lr.warmup_epochs=0", "--data.num_workers=1", "--training.device=cpu", *extra]


def test_eval_sparse_refuses_a_checkpoint_that_would_run_code(dataset, tmp_path):
    marker, evil = tmp_path / "ran", tmp_path / "evil.pt"
    torch.save({"model_state_dict": weights(), "x": RunsCode(marker)}, evil)
    proc = script("eval_sparse.py", f"--eval.checkpoint={evil}", "--model.arch=resnet20",
                  f"--model.num_classes={CLASSES}", "--data.style=cifar",
                  f"--data.val_dataset={dataset}", f"--data.calib_dataset={dataset}",
                  "--eval.device=cpu", f"--out.dir={tmp_path / 'o'}")
    assert_one_error_line(proc, str(evil), "exec", "--eval.trust_checkpoint=1")
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_resume_refuses_a_checkpoint_that_would_run_code(dataset, tmp_path):
    marker, folder = tmp_path / "ran", tmp_path / "run"
    folder.mkdir()
    torch.save({"format": ckpt.FORMAT, "epoch": 1, "model": weights(), "x": RunsCode(marker)},
               folder / ckpt.LAST)
    proc = script("train_cifar.py", *train_args(dataset, folder, 2))
    assert_one_error_line(proc, str(folder / ckpt.LAST), "exec", "--checkpoint.trust=1")
    assert not marker.exists() and not (folder / ckpt.FINAL_WEIGHTS).exists()


@pytest.fixture(scope="module")
def one_epoch(dataset, tmp_path_factory):
    """A finished one-epoch run whose checkpoint then says the run has two epochs: re-running with
    --training.epochs=2 resumes it for the second."""
    folder = tmp_path_factory.mktemp("one_epoch") / "run"
    proc = script("train_cifar.py", *train_args(dataset, folder, 1))
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(folder / ckpt.LAST, weights_only=True)  # our own files need no trust
    state["config"]["training"]["epochs"] = 2
    torch.save(state, folder / ckpt.LAST)
    os.remove(folder / ckpt.FINAL_WEIGHTS)
    return folder


@pytest.mark.slow
def test_old_checkpoint_of_ours_resumes_only_when_trusted(dataset, one_epoch, tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(one_epoch, folder)
    state = torch.load(folder / ckpt.LAST, weights_only=True)
    state["rng"]["numpy"] = ckpt._numpy_state(state["rng"]["numpy"])  # NumPy's tuple, as before
    torch.save(state, folder / ckpt.LAST)
    refused = script("train_cifar.py", *train_args(dataset, folder, 2))
    assert_one_error_line(refused, str(folder / ckpt.LAST), "numpy", "--checkpoint.trust=1")
    proc = script("train_cifar.py", *train_args(dataset, folder, 2, "--checkpoint.trust=1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    epochs = [json.loads(line)["epoch"] for line in (folder / "log.jsonl").read_text().splitlines()]
    assert epochs == [0, 1] and (folder / ckpt.FINAL_WEIGHTS).exists()


@pytest.mark.slow
def test_a_refused_checkpoint_write_stops_the_run_and_keeps_the_last(dataset, one_epoch, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(one_epoch, folder)
    before = (folder / ckpt.LAST).read_bytes()
    # big enough for config.json and log.jsonl, too small for a checkpoint (2.3 MB)
    proc = script("train_cifar.py", *train_args(dataset, folder, 2),
                  limit_file_size=len(before) // 2)
    assert_one_error_line(proc, str(folder / ckpt.LAST), "File too large")
    assert (folder / ckpt.LAST).read_bytes() == before
    assert not [name for name in os.listdir(folder) if name.endswith(".tmp")]
    assert not (folder / ckpt.FINAL_WEIGHTS).exists()
