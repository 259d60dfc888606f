"""train_cifar.py with --data.resident=1 and CrAM's schedule options, end to end: the same run as
the FFCV path (on the CPU), SIGKILLed mid-epoch and resumed bit-identically (one process and two
gloo processes), and bad inputs refused with one line."""
import sys

import pytest

from test_train_cli import (ROOT, args, assert_same_run, killed_and_resumed_equals_whole,
                            log_lines, train)

SCHEDULE = ("--cram.start_epoch=0.5", "--cram.interval=2", "--cram.ramp=1")


@pytest.mark.slow
def test_resident_run_equals_the_ffcv_path_run(data, tmp_path):
    """Same order, augmentation and normalisation: the same weights and log, bit for bit."""
    for name, resident in (("ffcv", "0"), ("resident", "1")):
        proc = train(*args(data, tmp_path / name, "--training.deterministic=1",
                           f"--data.resident={resident}"))
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resident data on cpu: 192 training images, 32 validation images" in proc.stdout
    assert_same_run(tmp_path / "ffcv", tmp_path / "resident")


@pytest.mark.slow
def test_sigkilled_resident_run_with_the_schedule_resumes_bit_identically(data, tmp_path):
    """start_epoch 0.5 of 6-step epochs: steps 0-2 plain, then the ramp from 1/2 to 1 over the 9
    steps left (exactly `is_full_step`): 2 compressing steps in epoch 0, 5 in epoch 1."""
    whole = killed_and_resumed_equals_whole(
        [sys.executable, str(ROOT / "train_cifar.py")], data, tmp_path,
        "--training.deterministic=1", "--data.val_dataset=", "--data.resident=1", *SCHEDULE)
    assert [sum(line["sparsity_draws"].values()) for line in log_lines(whole)] == [2, 5]


@pytest.mark.slow
def test_sigkilled_resident_torchrun_run_resumes_bit_identically(data, tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                str(ROOT / "train_cifar.py")]
    killed_and_resumed_equals_whole(torchrun, data, tmp_path, "--training.deterministic=1",
                                    "--data.val_dataset=",
                                    "--data.resident=1", *SCHEDULE)


@pytest.mark.parametrize("argv,script,message", [
    (["--data.resident=1", "--data.resident_limit_mb=0.1"], "train_cifar.py",
     "train.beton: resident data needs 0.6 MiB of host (RAM) memory, 0.1 MiB may be used "
     "(--data.resident_limit_mb); use the FFCV loader (--data.resident=0)"),
    (["--data.resident=1", "--resolution.min_res=32", "--resolution.max_res=32",
      "--resolution.val_res=32"], "train_imagenet.py",
     "--data.resident=1: only for the cifar style"),
    (["--data.resident=1", "--data.order=quasi_random"], "train_cifar.py",
     "leave --data.order at random (not quasi_random)"),
    (["--data.resident=1", "--data.decode=gpu"], "train_cifar.py",
     "leave --data.decode at cpu (not gpu)"),
    (["--data.resident_limit_mb=-1"], "train_cifar.py", "--data.resident_limit_mb=-1: must be >= 0"),
    (["--cram.start_epoch=2"], "train_cifar.py",
     "--cram.start_epoch=2: must be in [0, --training.epochs=2)"),
    (["--cram.ramp=1"], "train_cifar.py", "--cram.ramp=1 needs --cram.interval >= 2"),
])
def test_bad_inputs_are_one_line_exit_2_and_leave_no_run_folder(data, tmp_path, argv, script,
                                                                 message):
    proc = train(*args(data, tmp_path / "run"), *argv, script=script)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()
