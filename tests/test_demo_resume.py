"""The demo's folder and Ctrl-C: a foreign non-empty --out is refused untouched; Ctrl-C ends with
one line (exit 130) and the trainer's own last lines in demo.log; running it again resumes (the
datasets are kept, finished trainings are not redone, the sweep reruns)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ffcv_cram.demo_folder import DemoFolder

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "offline"}
DATASETS = ["train.beton", "val.beton", "calib.beton"]


def demo(out, *extra, timeout=900):
    return subprocess.run([sys.executable, "-m", "ffcv_cram.demo", "--quick", "--device", "cpu",
                           "--out", str(out), *extra], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=ENV)


def _one_error_line(proc, *words):
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_a_foreign_non_empty_folder_is_refused_and_left_alone(tmp_path):
    (tmp_path / "thesis.tex").write_text("mine")
    proc = demo(tmp_path, timeout=120)
    assert proc.returncode == 2
    _one_error_line(proc, str(tmp_path), "not a demo folder", "--out")
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]  # nothing written, nothing deleted
    file = tmp_path / "thesis.tex"
    proc = demo(file, timeout=120)
    assert proc.returncode == 2
    _one_error_line(proc, str(file), "not a folder")


def test_a_full_demo_folder_is_not_resumed_as_a_quick_one(tmp_path):
    DemoFolder.open(tmp_path / "out", "full")
    proc = demo(tmp_path / "out", timeout=120)
    assert proc.returncode == 2
    _one_error_line(proc, "holds a full demo", "without --quick")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["demo.json"]


def _wait_for(proc, text: str, seconds: float) -> str:
    """The demo's stdout up to the first line containing `text`."""
    seen, deadline = "", time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        if text in line:
            return seen
    pytest.fail(f"no {text!r} in the demo's output:\n{seen[-3000:]}")


@pytest.mark.slow
def test_ctrl_c_ends_in_one_line_and_running_again_resumes(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "ffcv_cram.demo", "--quick", "--device", "cpu",
                             "--out", str(out)], cwd=ROOT, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        # the first training runs: its first line came live, long before it ends
        shown = _wait_for(proc, "loader threads:", 600)
        assert "$ python train_cifar.py" in shown and "runs/sgd" not in shown
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends
        rest, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130
    lines = err.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("error: interrupted during train_cifar.py"), err
    assert "Traceback" not in shown + rest + err
    log = (out / "demo.log").read_text()
    assert "error: interrupted; the last checkpoint is kept" in log  # the trainer's own last line
    assert "Traceback" not in log
    written = {name: (out / name).stat().st_mtime_ns for name in DATASETS}

    again = demo(out)  # resumes: datasets kept, the interrupted training continues
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for name in ["shapes", *DATASETS]:
        assert f"skip: {out / name}" in again.stdout
    assert "$ python -m ffcv_cram.data.synthetic" not in again.stdout
    assert "$ python write_datasets.py" not in again.stdout
    assert {name: (out / name).stat().st_mtime_ns for name in DATASETS} == written
    assert again.stdout.count("done: ") == 2 and "Top-1 accuracy" in again.stdout

    results = out / "sweep" / "results.json"
    before = results.stat().st_mtime_ns
    third = demo(out)  # everything finished: the trainings say so, the sweep runs again
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert third.stdout.count("nothing to do: ") == 2
    assert "$ python eval_sparse.py" in third.stdout and results.stat().st_mtime_ns > before
    assert (out / "demo.log").read_text().count("=== demo started") == 3  # appended, never replaced
