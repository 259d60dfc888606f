"""train_imagenet.py on the CPU decode path replays exactly: a run killed with SIGKILL and started
again with the same command ends bit-identical to an uninterrupted run with the same seed, though
the two use different numbers of loader threads."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from betons import varied_gradient, write_test_beton

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
N = 64


@pytest.fixture(scope="module")
def beton(tmp_path_factory):
    """Images of different sizes and shapes, half stored as JPEG; four classes."""
    return write_test_beton(tmp_path_factory.mktemp("imagenet_replay") / "train.beton",
                            varied_gradient, N, labels=np.arange(N) % 4, write_mode="proportion",
                            compress_probability=0.5)


def command(beton, folder, workers):
    # progressive resizing: the resumed epoch is cropped at another size than the first
    return [sys.executable, str(ROOT / "train_imagenet.py"), f"--data.train_dataset={beton}",
            "--data.val_dataset=", f"--data.num_workers={workers}", f"--logging.folder={folder}",
            "--model.arch=resnet20", "--model.num_classes=4", "--training.epochs=2",
            "--training.global_batch_size=16", "--lr.scaling=none", "--training.device=cpu", "--training.amp=none",
            "--training.deterministic=1", "--lr.warmup_epochs=0", "--resolution.min_res=32",
            "--resolution.max_res=48", "--resolution.end_ramp=1"]


def weights(folder):
    return torch.load(Path(folder) / "final_weights.pt")


def identical(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sigkilled_run_resumes_bit_identical_to_an_uninterrupted_one(beton, tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    proc = subprocess.run(command(beton, whole, 1), capture_output=True, text=True, timeout=600,
                          cwd=ROOT, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]

    proc = subprocess.Popen(command(beton, part, 2), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=ROOT, env=ENV)
    deadline = time.time() + 300
    while not (part / "checkpoint_last.pt").exists():  # epoch 0 done and saved
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (part / "final_weights.pt").exists()
    resumed = subprocess.run(command(beton, part, 2), capture_output=True, text=True, timeout=600,
                             cwd=ROOT, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert identical(weights(whole), weights(part))
    lines = [json.loads(line) for line in (part / "log.jsonl").read_text().splitlines()]
    assert [(line["epoch"], line["resolution"]) for line in lines] == [(0, 32), (1, 48)]
