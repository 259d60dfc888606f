"""train_cifar.py / train_imagenet.py end to end: outputs, torchrun, resume, config checks, wandb."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ffcv_cram.data.loader_options import LoaderOptions
from ffcv_cram.data.pipelines import ImageLoader
from ffcv_cram.models import get_model
from ffcv_cram.config import UsageError
from ffcv_cram.train.checkpoint import load_checkpoint
from ffcv_cram.runtime.dist import Context
from ffcv_cram.train.epoch_so_far import EpochSoFar
from ffcv_cram.runtime.evaluate import evaluate
from ffcv_cram.train.loop import _resume_point

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def args(data, folder, *extra, epochs=2):
    return [f"--data.train_dataset={data['train']}", f"--data.val_dataset={data['val']}",
            f"--logging.folder={folder}", f"--training.epochs={epochs}",
            "--training.global_batch_size=32", "--lr.scaling=none", "--lr.warmup_epochs=0", "--data.num_workers=1", "--training.device=cpu", *extra]


def train(*argv, script="train_cifar.py", timeout=600):
    return subprocess.run([sys.executable, str(ROOT / script), *argv], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=ENV)


def log_lines(folder):
    return [json.loads(line) for line in (Path(folder) / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def cram_run(data, tmp_path_factory):
    """One uninterrupted 3-epoch CrAM run (deterministic kernels, wandb offline): the reference of
    the resume test below, and the run whose folder the first test inspects."""
    folder = tmp_path_factory.mktemp("cram_run") / "run"
    proc = train(*args(data, folder, "--training.deterministic=1", epochs=3),
                 "--logging.wandb_project=ffcv-cram-tests", "--logging.wandb_mode=offline")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


@pytest.mark.slow
def test_cram_run_leaves_a_complete_run_folder(data, cram_run):
    folder = cram_run
    assert {"config.json", "log.jsonl", "checkpoint_last.pt", "final_weights.pt"} <= set(os.listdir(folder))
    lines = log_lines(folder)
    assert [line["epoch"] for line in lines] == [0, 1, 2]
    for line in lines:
        assert {"train_loss", "train_top1", "lr", "images_per_s", "epoch_time_s", "val_top1",
                "val_top5", "sparsity_draws"} <= set(line)
        assert sum(line["sparsity_draws"].values()) == 6  # 192 images / 32 per step
    config = json.loads((folder / "config.json").read_text())
    assert config["training"]["optimizer"] == "cram" and config["cram"]["rho"] == 0.2
    model = get_model("resnet20", 4)
    # a plain state_dict, loaded strictly
    model.load_state_dict(torch.load(folder / "final_weights.pt", weights_only=True))
    assert any(p.name.startswith("offline-run") for p in (folder / "wandb").iterdir())
    again = train(*args(data, folder, "--training.deterministic=1", epochs=3))
    assert again.returncode == 0 and "nothing to do" in again.stdout


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(data, tmp_path):
    """Validation: 31 images in batches of 5, so shards of 16 (5 + 5 + 5 + 1) and 15 (5 + 5 + 5):
    uneven batch counts and a last batch of one sample. Only rank 0 prints the closing line."""
    folder = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(ROOT / "train_cifar.py"),
                           *args(data, folder,  # 16 per process
                                 f"--data.val_dataset={data['val_odd']}",
                                 "--validation.batch_size=5")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the user's --data.num_workers wins, and only rank 0 says so
    assert proc.stdout.count("loader threads:") == 1
    assert "loader threads: 1 per loader (--data.num_workers); torch threads: 1" in proc.stdout
    lines = log_lines(folder)
    assert [line["epoch"] for line in lines] == [0, 1]
    assert sum(lines[0]["sparsity_draws"].values()) == 6  # 96 images per rank / 16
    assert [line for line in proc.stdout.splitlines() if line.startswith("done:")] == [
        f"done: {folder}/final_weights.pt (val top-1 {lines[-1]['val_top1']:.2f}%)"]
    model = get_model("resnet20", 4).to(memory_format=torch.channels_last)
    model.load_state_dict(torch.load(folder / "final_weights.pt", weights_only=True))
    one_process = evaluate(model, ImageLoader(data["val_odd"], train=False, batch_size=31,
                                              options=LoaderOptions(style="cifar", num_workers=1)))
    assert one_process["samples"] == 31  # every sample counted once, over both ranks:
    assert lines[-1]["val_top1"] == pytest.approx(one_process["top1"])


@pytest.mark.slow
def test_interrupted_and_resumed_run_is_bit_identical(data, cram_run, tmp_path):
    extra = ("--training.deterministic=1",)
    whole = cram_run
    part = tmp_path / "part"
    proc = subprocess.Popen([sys.executable, str(ROOT / "train_cifar.py"),
                             *args(data, part, *extra, epochs=3)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)
    deadline = time.time() + 300
    while not (part / "checkpoint_last.pt").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode != 0 and not (part / "final_weights.pt").exists()
    resumed = train(*args(data, part, *extra, epochs=3))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(whole / "final_weights.pt", weights_only=True)
    b = torch.load(part / "final_weights.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [line["epoch"] for line in log_lines(part)] == [0, 1, 2]
    assert log_lines(part)[-1]["train_loss"] == log_lines(whole)[-1]["train_loss"]
    changed = train(*args(data, part, "--cram.rho=0.1", epochs=3))
    assert changed.returncode == 2 and "cram.rho" in changed.stderr


@pytest.mark.parametrize("argv,message", [
    (["--training.optimzer=sgd"],
     "unknown key --training.optimzer (did you mean --training.optimizer?)"),
    (["--training.epochs=two"], "--training.epochs='two'"),
    (["--training.amp=fp8"], "--training.amp='fp8'"),
    (["--cram.sparsities=0.5,1.2"], "--cram.sparsities"),
    (["--cram.patterns=5:4"], "N must"),
    (["--resolution.min_res=64"], "cifar style"),
    (["--model.arch=resnet21"], "unknown model"),
    (["--checkpoint.every_steps=10", "--data.order=quasi_random", "--data.in_memory=0"],
     "--checkpoint.every_steps needs --data.order=random"),
    (["--cram.interval=0"], "--cram.interval='0': expected an integer >= 1"),
    (["--cram.second_pass_fraction=1.5"], "--cram.second_pass_fraction=1.5: must be in (0, 1]"),
    (["--training.cuda_graph=1"], "--training.cuda_graph=1: needs a CUDA GPU"),
    (["--training.cuda_graph=1", "--training.amp=fp16"],
     "--training.cuda_graph=1: fp16's loss scaling decides on the host"),
    (["--training.cuda_graph=1", "--training.optimizer=sgd"],
     "--training.cuda_graph=1: does not take --training.optimizer=sgd"),
])
def test_bad_arguments_exit_2_naming_the_key(data, tmp_path, run_main, argv, message):
    code, _, stderr = run_main("train_cifar.py", *args(data, tmp_path / "x"), *argv)
    assert code == 2 and message in stderr, stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("script", ["train_cifar.py", "train_imagenet.py"])
def test_a_bad_argument_exits_2_from_the_command_line(data, tmp_path, script):
    proc = train(*args(data, tmp_path / "x"), "--training.epochs=two", script=script)
    assert proc.returncode == 2 and "error: --training.epochs='two'" in proc.stderr, proc.stderr
    assert not (tmp_path / "x").exists()


def test_yaml_config_unknown_key_and_overrides(data, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  optimizer: sgd\n  epoch: 3\n")
    proc = train(*args(data, tmp_path / "x"), f"--config-file={bad}")
    assert proc.returncode == 2 and "unknown key 'training.epoch'" in proc.stderr
    good = tmp_path / "good.yaml"
    good.write_text("training:\n  optimizer: sgd\n  epochs: 1\nmodel:\n  arch: resnet20\n")
    folder = tmp_path / "y"
    proc = train(f"--config-file={good}", *args(data, folder, epochs=1), "--lr.lr=0.05",
                 "--data.val_dataset=")
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((folder / "config.json").read_text())
    assert config["training"]["optimizer"] == "sgd" and config["lr"]["lr"] == 0.05
    assert "val_top1" not in log_lines(folder)[0]


def test_imagenet_script_needs_resolutions_and_trains(data, tmp_path):
    folder = tmp_path / "inet"
    proc = train(*args(data, folder, epochs=1), "--model.arch=resnet18", "--resolution.min_res=32",
                 "--resolution.max_res=64", "--resolution.end_ramp=1", "--resolution.val_res=32",
                 "--training.optimizer=sam", "--training.amp=bf16", "--model.blurpool=1",
                 "--validation.flip_tta=1", "--lr.schedule=cyclic", "--lr.peak_epoch=0.5",
                 "--validation.batch_size=31", script="train_imagenet.py")  # 32 = 31 + 1
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = log_lines(folder)[0]
    assert line["resolution"] == 32 and "val_top1" in line and line["sparsity_draws"] == {}


TIMING = {"images_per_s", "epoch_time_s"}  # the only parts of a resumed epoch's log line that differ


def worker_pids(pid):
    """The processes `pid` started (torchrun's workers run in sessions of their own)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            children.append(int(stat.parent.name))
    return children


def dead(pid):
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()  # or a zombie
    except FileNotFoundError:
        return True


def sigkill_after_mid_epoch_checkpoint(command, folder, log):
    """Run `command` until its first checkpoint (a mid-epoch one with --checkpoint.every_steps=1),
    then SIGKILL it and every process it started; returns where it stopped: "epoch e, batch b"."""
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=out, cwd=ROOT, env=ENV)
        deadline = time.time() + 300
        while not (folder / "checkpoint_last.pt").exists():
            assert proc.poll() is None and time.time() < deadline, Path(log).read_text()[-3000:]
            time.sleep(0.02)
        workers = worker_pids(proc.pid)
        for pid in [proc.pid, *workers]:
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=60)
    while not all(map(dead, workers)):  # SIGKILL is delivered asynchronously
        time.sleep(0.05)
    assert not (folder / "final_weights.pt").exists()
    state = load_checkpoint(str(folder / "checkpoint_last.pt"))
    assert state["epoch_so_far"] is not None, "not killed mid-epoch"
    return f"epoch {state['epoch']}, batch {state['epoch_so_far']['batch']}"


def assert_same_run(whole, part):
    a, b = torch.load(whole / "final_weights.pt"), torch.load(part / "final_weights.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda lines: [{k: v for k, v in line.items() if k not in TIMING} for line in lines]
    assert strip(log_lines(part)) == strip(log_lines(whole))  # loss, top-1, draws of whole epochs


def killed_and_resumed_equals_whole(launcher, data, tmp_path, *extra):
    """Train `whole` uninterrupted (no mid-epoch checkpoints); train `part` with a checkpoint every
    step, SIGKILL it after the first one (mid-epoch, six steps an epoch), leave a half-written
    checkpoint as a kill during a write would, and rerun the same command: it resumes where it
    stopped, cleans up, and ends with the weights and log of `whole`. Returns `whole`."""
    whole, part = tmp_path / "whole", tmp_path / "part"
    proc = subprocess.run([*launcher, *args(data, whole, *extra)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    command = [*launcher, *args(data, part, *extra, "--checkpoint.every_steps=1")]
    stopped = sigkill_after_mid_epoch_checkpoint(command, part, tmp_path / "killed.log")
    (part / ".checkpoint_last.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from checkpoint_last.pt: {stopped} of 6" in resumed.stdout
    assert_same_run(whole, part)
    assert not list(part.glob(".*.tmp"))  # what the kill left is cleaned up
    return whole


@pytest.mark.slow
def test_sigkilled_mid_epoch_torchrun_run_resumes_bit_identically(data, tmp_path):
    """Two gloo processes, batch 16 on each."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                str(ROOT / "train_cifar.py")]
    killed_and_resumed_equals_whole(torchrun, data, tmp_path, "--training.deterministic=1",
                                    "--data.val_dataset=")  # 16 per process


@pytest.mark.slow
def test_sigkilled_mid_epoch_imagenet_style_run_resumes_bit_identically(data, tmp_path):
    killed_and_resumed_equals_whole(
        [sys.executable, str(ROOT / "train_imagenet.py")], data, tmp_path,
        "--training.deterministic=1", "--data.val_dataset=", "--training.amp=none",
        "--model.arch=resnet20", "--resolution.min_res=32", "--resolution.max_res=32",
        "--resolution.val_res=32")


def test_a_mid_epoch_checkpoint_continues_only_with_its_number_of_processes():
    state = {"epoch": 0, "epoch_so_far": EpochSoFar(batch=3, world_size=2).to_dict()}
    assert _resume_point(state, Context(world_size=2), "run/checkpoint_last.pt").batch == 3
    with pytest.raises(UsageError, match="run/checkpoint_last.pt: written in the middle of an epoch "
                       "trained by 2 processes, resumed by 1; resume it with 2 processes"):
        _resume_point(state, Context(), "run/checkpoint_last.pt")
    at_epoch_end = {"epoch": 1, "epoch_so_far": None}
    assert _resume_point(at_epoch_end, Context(), "run/checkpoint_last.pt").batch == 0


@pytest.mark.slow
def test_cheaper_cram_run_resumes_bit_identically_and_counts_only_compressing_steps(data, tmp_path):
    """interval 4 with reuse and half-batch second passes, SIGKILLed after its first mid-epoch
    checkpoint (step 1: a one-pass step that needs the reused term of step 0), finishes like an
    uninterrupted run. Steps 0 and 4 compress in epoch 0, step 8 in epoch 1."""
    whole = killed_and_resumed_equals_whole(
        [sys.executable, str(ROOT / "train_cifar.py")], data, tmp_path,
        "--training.deterministic=1", "--data.val_dataset=", "--cram.interval=4",
        "--cram.reuse=1", "--cram.second_pass_fraction=0.5")
    assert [sum(line["sparsity_draws"].values()) for line in log_lines(whole)] == [2, 1]
