"""eval_sparse.py on the demo's real training runs: settings taken from the run folder, one sweep
split over two torchrun processes (gloo), no batch-norm tuning, the upsampling warning, logs."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ffcv_cram.config import UsageError
from ffcv_cram.sweep import run_settings

ROOT = Path(__file__).resolve().parents[1]
# one torch thread in every process: the same kernels, so the same bits, in 1 and 2 processes
ENV = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def eval_sparse(*argv, launcher=(sys.executable,)):
    """Run it with its output in pipes (not a terminal); returns (exit status, stdout, stderr) as
    text, after checking that the raw bytes hold no progress-bar frame."""
    proc = subprocess.run([*launcher, str(ROOT / "eval_sparse.py"), *argv], capture_output=True,
                          timeout=600, cwd=ROOT, env=ENV)
    assert b"\r" not in proc.stdout + proc.stderr
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def without_timings(rows):
    return [{k: v for k, v in row.items() if not k.startswith("time_")} for row in rows]


@pytest.mark.slow
def test_two_processes_with_explicit_settings_equal_one_with_the_runs_settings(demo, tmp_path):
    """One process takes arch, classes and style from the run folders; two torchrun processes are
    told them. 2 dense evaluations + 2 checkpoints x 3 targets = 8 items, 4 per rank."""
    out, _ = demo
    common = [f"--eval.checkpoint={out / 'runs/cram/final_weights.pt'},{out / 'runs/sgd/final_weights.pt'}",
              "--eval.labels=CrAM+,SGD", f"--data.val_dataset={out / 'val.beton'}",
              f"--data.calib_dataset={out / 'calib.beton'}", "--prune.method=global,nm",
              "--prune.sparsities=0.5,0.9", "--prune.nm=2:4", "--bnt.batches=2"]
    code, stdout, stderr = eval_sparse(*common, f"--out.dir={tmp_path / 'one'}")
    assert code == 0, stderr[-3000:]
    assert (f"settings of the training run ({out / 'runs/cram/config.json'}, "
            f"{out / 'runs/sgd/config.json'}): --model.arch=resnet20 --model.num_classes=4 "
            "--model.blurpool=0 --data.style=cifar --data.cifar_inputs=reference") in stdout.splitlines()
    code, stdout2, stderr2 = eval_sparse(
        *common, "--model.arch=resnet20", "--model.num_classes=4", "--data.style=cifar",
        f"--out.dir={tmp_path / 'two'}", launcher=TORCHRUN)
    assert code == 0, stderr2[-3000:]
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert len(one) == 6 and without_timings(two) == without_timings(one)
    assert len({row["bnt_loss"] for row in one}) == 6  # the comparison has numbers to tell apart
    progress = [line for line in stdout2.splitlines() if line.startswith("[")]
    assert [line.split("]")[0] for line in progress] == [f"[{i}/8" for i in range(1, 9)]
    assert {line.rsplit("rank ", 1)[1] for line in progress} == {"0)", "1)"}
    assert stdout2.count("results:") == 1  # rank 0 reports, once


@pytest.mark.slow
def test_without_bnt_no_calibration_data_and_upsampling_is_warned(demo, tmp_path):
    out, _ = demo
    code, stdout, stderr = eval_sparse(
        f"--eval.checkpoint={out / 'runs/cram/final_weights.pt'}", "--data.style=imagenet",
        "--data.resolution=64", f"--data.val_dataset={out / 'val.beton'}",
        "--prune.sparsities=0.5", "--bnt.batches=0", f"--out.dir={tmp_path / 'o'}")
    assert code == 0, stderr[-3000:]
    warnings = [line for line in stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "2.3x upsampling" in warnings[0] and "--data.style=cifar" in warnings[0]
    assert "--data.style" not in stdout.splitlines()[0]  # given: not taken from the run
    row, = json.loads((tmp_path / "o" / "results.json").read_text())
    assert row["bnt_top1"] is None and row["time_bnt_s"] is None and row["pruned_top1"] >= 0


@pytest.mark.slow
def test_runs_that_differ_are_refused_in_one_line(demo, tmp_path):
    out, _ = demo
    for name in ("cram", "sgd"):
        shutil.copytree(out / "runs" / name, tmp_path / name)
    config = json.loads((tmp_path / "sgd" / "config.json").read_text())
    config["model"]["blurpool"] = True
    (tmp_path / "sgd" / "config.json").write_text(json.dumps(config))
    argv = [f"--eval.checkpoint={tmp_path / 'cram/final_weights.pt'},{tmp_path / 'sgd/final_weights.pt'}",
            f"--data.val_dataset={out / 'val.beton'}", f"--data.calib_dataset={out / 'calib.beton'}",
            f"--out.dir={tmp_path / 'o'}"]
    code, _, stderr = eval_sparse(*argv)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, stderr
    assert "differ in --model.blurpool: 0 (" in errors[0] and "1 (" in errors[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_where_the_settings_come_from(demo, tmp_path):
    out, _ = demo
    config = json.loads((out / "runs/cram/config.json").read_text())
    assert run_settings.settings_of(config) == {
        "model.arch": "resnet20", "model.blurpool": False, "model.num_classes": 4, "data.style": "cifar",
        "data.cifar_inputs": "reference"}
    imagenet = {**config, "resolution": {**config["resolution"], "val_res": 256}}
    assert run_settings.settings_of(imagenet)["data.resolution"] == 256
    # without config.json: the configuration inside checkpoint_last.pt beside the weights
    for name in ("final_weights.pt", "checkpoint_last.pt"):
        shutil.copy(out / "runs/cram" / name, tmp_path / name)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')  # some other tool's
    found, source = run_settings.run_config(str(tmp_path / "final_weights.pt"), None)
    assert source == str(tmp_path / "checkpoint_last.pt") and found["model"]["arch"] == "resnet20"
    # what the user gave stays; runs that differ elsewhere are refused
    runs = [(config, "a/config.json"), None, (imagenet, "b/config.json")]
    taken, line = run_settings.infer(runs, {"data.style", "data.resolution"})
    assert taken == {"model.arch": "resnet20", "model.num_classes": 4, "model.blurpool": False,
                     "data.cifar_inputs": "reference"}  # only the cifar run records it
    assert line.startswith("settings of the training run (a/config.json, b/config.json): ")
    with pytest.raises(UsageError, match="differ in --data.style: cifar"):
        run_settings.infer(runs, set())
    assert run_settings.infer([None], set()) == ({}, None)


@pytest.mark.slow
def test_compiled_evaluations_equal_eager_ones(demo, tmp_path):
    """--eval.compile: the same sweep through inductor's compiled model (pruning and BNT stay on
    the plain one, which shares the parameters) gives the same numbers."""
    out, _ = demo
    common = [f"--eval.checkpoint={out / 'runs/cram/final_weights.pt'}",
              f"--data.val_dataset={out / 'val.beton'}", f"--data.calib_dataset={out / 'calib.beton'}",
              "--prune.sparsities=0.5,0.9", "--bnt.batches=2"]
    code, _, stderr = eval_sparse(*common, f"--out.dir={tmp_path / 'eager'}")
    assert code == 0, stderr[-3000:]
    code, _, stderr = eval_sparse(*common, "--eval.compile=1", f"--out.dir={tmp_path / 'compiled'}")
    assert code == 0, stderr[-3000:]
    eager, compiled = (json.loads((tmp_path / name / "results.json").read_text())
                       for name in ("eager", "compiled"))
    assert len(eager) == len(compiled) == 2
    for a, b in zip(eager, compiled):
        for key in ("dense", "pruned", "bnt"):
            assert b[f"{key}_top1"] == a[f"{key}_top1"]
            assert b[f"{key}_loss"] == pytest.approx(a[f"{key}_loss"], rel=1e-4)
