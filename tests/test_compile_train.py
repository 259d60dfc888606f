"""train_cifar.py --training.compile=1 end to end: the compile cost logged once, no recompiles
across epochs and the validation between them, checkpoints and final_weights.pt plain; a compile
mode without compile, and compiling without a C++ compiler on the CPU, are refused. (Compiling
under DDP: tests/test_compile.py.)"""
import subprocess
import sys

import pytest
import torch

from ffcv_cram.models import get_model
from ffcv_cram.train.checkpoint import load_checkpoint
from test_train_cli import ENV, ROOT, args, log_lines, train

MESSAGE = "torch.compile (mode default): the first training step took"


@pytest.mark.slow
def test_compiled_cram_run(data, tmp_path):
    folder = tmp_path / "run"
    proc = train(*args(data, folder, "--training.compile=1", "--training.optimizer=cram"),
                 timeout=1200)  # compiling ResNet-20 takes minutes on a loaded 2-core CPU
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(MESSAGE) == 1 and "compiling 2 graphs" in proc.stdout
    lines = log_lines(folder)
    assert [line["epoch"] for line in lines] == [0, 1]
    assert lines[0]["compile_s"] > 0 and "compile_s" not in lines[1]  # reported once
    assert [line["compiled_graphs"] for line in lines] == [2, 2]  # the frozen pass: one; then none
    keys = list(get_model("resnet20", 4).state_dict())
    assert list(load_checkpoint(str(folder / "checkpoint_last.pt"))["model"]) == keys
    model = get_model("resnet20", 4)
    model.load_state_dict(torch.load(folder / "final_weights.pt", weights_only=True))  # strict


def test_a_compile_mode_without_compile_is_refused(data, tmp_path, run_main):
    code, _, stderr = run_main("train_cifar.py", *args(data, tmp_path / "x"),
                               "--training.compile_mode=max-autotune-no-cudagraphs")
    assert code == 2 and stderr.count("error:") == 1, stderr
    assert ("--training.compile_mode=max-autotune-no-cudagraphs: needs --training.compile=1"
            in stderr) and not (tmp_path / "x").exists()


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_cuda_graph_replay_is_refused_on_the_cpu(data, tmp_path, run_main, device):
    if device == "auto" and torch.cuda.is_available():
        pytest.skip("auto picks the GPU here")
    code, _, stderr = run_main("train_cifar.py", *args(data, tmp_path / "x"), "--training.compile=1",
                               "--training.compile_mode=reduce-overhead",
                               f"--training.device={device}")
    assert code == 2 and stderr.count("error:") == 1, stderr
    assert "error: --training.compile_mode=reduce-overhead: replays CUDA graphs" in stderr
    assert "use --training.compile_mode=default" in stderr and not (tmp_path / "x").exists()


def test_compiling_on_the_cpu_without_a_cxx_compiler_is_refused(data, tmp_path):
    # a process of its own: inductor looks its compiler up once per process
    proc = subprocess.run([sys.executable, str(ROOT / "train_cifar.py"),
                           *args(data, tmp_path / "x", "--training.compile=1")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**ENV, "CXX": str(tmp_path / "no-such-g++")})
    assert proc.returncode == 2 and proc.stderr.count("error:") == 1, proc.stderr
    assert "error: --training.compile: torch.compile on the CPU needs a C++ compiler" in proc.stderr


def test_compile_settings_may_change_when_resuming():
    """Also for a run written before the flag existed: its config has no compile keys."""
    from ffcv_cram.train.loop import config_differences
    saved = {"training": {"optimizer": "cram", "epochs": 2}}
    now = {"training": {"optimizer": "cram", "epochs": 2, "compile": True,
                        "compile_mode": "max-autotune-no-cudagraphs"}}
    assert config_differences(saved, now) == []
    now["training"]["optimizer"] = "sgd"
    assert config_differences(saved, now) == ["training.optimizer"]
