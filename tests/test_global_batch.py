"""The global batch is the recipe's unit: the per-process batch and the effective learning rate
follow from it and the number of processes, the same run at any world size, and nothing changes
silently (refused and scaled cases say what they do)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ffcv_cram.config import UsageError
from ffcv_cram.data.convert import convert
from ffcv_cram.data.synthetic import generate
from ffcv_cram.train.global_batch import BatchPlan, plan_batch
from ffcv_cram.train.loop import config_differences

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_per_process_batch_is_the_global_batch_over_the_processes():
    assert plan_batch(512, 0.2, 512, "", 8) == BatchPlan(8, 64, 512, 0.2)
    assert plan_batch(512, 0.2, 0, "", 1) == BatchPlan(1, 512, 512, 0.2)  # 0: lr's batch = global
    assert plan_batch(4096, 1.7, 4096, "", 8, max_per_process=512) == BatchPlan(8, 512, 4096, 1.7)


@pytest.mark.parametrize("scaling,lr", [("linear", 0.1), ("sqrt", 0.2 / 2 ** 0.5), ("none", 0.2)])
def test_another_global_batch_scales_the_lr_as_told(scaling, lr):
    plan = plan_batch(256, 0.2, 512, scaling, 2)
    assert (plan.batch_size_per_process, plan.global_batch_size) == (128, 256)
    assert plan.lr == pytest.approx(lr, rel=1e-15)


@pytest.mark.parametrize("args,message", [
    ((256, 0.2, 512, "", 2), "--training.global_batch_size=256 differs from the global batch 512 "
     "that --lr.lr=0.2 belongs to (--lr.batch_size); say how the learning rate follows: "
     "--lr.scaling=linear (lr 0.1) | sqrt (lr 0.1414) | none (lr 0.2)"),
    ((512, 0.2, 512, "", 3), "--training.global_batch_size=512: does not divide over 3 processes; "
     "use a multiple of 3 (e.g. 510 or 513, with --lr.scaling) or another process count"),
    ((2, 0.2, 2, "", 4), "use a multiple of 4 (e.g. 4, with --lr.scaling)"),
    ((4096, 1.7, 4096, "", 1, 512), "--training.global_batch_size=4096 over 1 processes is 4096 "
     "per process, above --training.max_batch_per_process=512; gradient accumulation is not "
     "implemented: run on at least 8 processes"),
])
def test_refused_plans_name_the_numbers(args, message):
    with pytest.raises(UsageError) as err:
        plan_batch(*args)
    assert message in str(err.value)


def _old_and_new(world_size):
    old = {"training": {"batch_size": 64, "epochs": 100}, "lr": {"lr": 0.2, "schedule": "cosine"}}
    new = {"training": {"global_batch_size": 512, "max_batch_per_process": 0, "epochs": 100},
           "lr": {"lr": 0.2, "batch_size": 512, "scaling": "", "schedule": "cosine"},
           "batch_plan": plan_batch(512, 0.2, 512, "", world_size).to_dict()}
    return old, new


def test_a_run_saved_with_a_per_process_batch_resumes_with_its_global_batch():
    """Old run folders hold training.batch_size per process: 64 resumed on 8 processes is the
    recipe's global 512 (no difference); on 4 processes it would be 256, and is refused."""
    old, new = _old_and_new(8)
    assert config_differences(old, new, world_size=8) == []
    old, new = _old_and_new(4)
    assert config_differences(old, new, world_size=4) == ["batch_plan.global_batch_size"]


def test_a_new_run_resumes_at_another_world_size_with_the_same_global_batch():
    _, saved = _old_and_new(8)
    _, current = _old_and_new(4)
    assert config_differences(saved, current, world_size=4) == []
    current["batch_plan"]["lr"] = 0.1
    assert config_differences(saved, current, world_size=4) == ["batch_plan.lr"]


@pytest.fixture(scope="module")
def train_beton(tmp_path_factory):
    base = tmp_path_factory.mktemp("global_batch")
    generate(base / "shapes", classes=4, train_per_class=48, val_per_class=1, size=32, workers=1)
    convert("folder", "train", str(base / "shapes" / "train"), str(base / "train.beton"),
            num_workers=1, progress=False)
    return str(base / "train.beton")


def _train(script, world_size, *argv):
    launch = [sys.executable] if world_size == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world_size}"]
    return subprocess.run([*launch, str(ROOT / script), *argv], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=ENV)


def _lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


RECIPE = ["--model.arch=small_conv_net_no_bn", "--training.epochs=1", "--training.global_batch_size=32",
          "--lr.lr=0.1", "--lr.batch_size=32", "--lr.warmup_epochs=0", "--training.optimizer=cram",
          "--cram.sparsities=0.5,0.7,0.9", "--training.weight_decay=5e-4", "--resolution.min_res=32",
          "--resolution.max_res=32", "--resolution.val_res=32", "--training.device=cpu",
          "--data.num_workers=1", "--training.amp=none", "--logging.steps=1"]


def _steps_at_world_size(world, beton, folder):
    """The recipe's steps.jsonl on `world` processes, after checking what the run says and
    records about its batch."""
    proc = _train("tests/train_without_batchnorm.py", world, *RECIPE,
                  f"--data.train_dataset={beton}", f"--logging.folder={folder}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"batch: 32 global = {32 // world} per process x {world} processes; lr 0.1" in proc.stdout
    plan = json.loads((folder / "config.json").read_text())["batch_plan"]
    assert plan == {"world_size": world, "batch_size_per_process": 32 // world,
                    "global_batch_size": 32, "lr": 0.1}
    for line in _lines(folder / "log.jsonl"):
        assert (line["world_size"], line["batch_size_per_process"]) == (world, 32 // world)
        assert (line["global_batch_size"], line["peak_lr"]) == (32, 0.1)
    return _lines(folder / "steps.jsonl")


@pytest.fixture(scope="module")
def one_process_steps(train_beton, tmp_path_factory):
    steps = _steps_at_world_size(1, train_beton, tmp_path_factory.mktemp("world1"))
    assert len(steps) == 6 and {s["samples"] for s in steps} == {32}
    assert {s["sparsity"] for s in steps} == {"0.5", "0.7", "0.9"}
    return steps


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_one_recipe_on_more_processes_trains_the_same_steps(one_process_steps, train_beton,
                                                            tmp_path, world):
    """192 images, global batch 32: 6 steps of 32, 16 or 8 per process. Every world size sees
    the same 32 images per step (one seeded permutation, each rank every world_size-th) with the
    same crops (seeded per image), the same draws (seeded) and the same lr; without BatchNorm
    the losses differ only by the order of float reductions."""
    steps = _steps_at_world_size(world, train_beton, tmp_path)
    keys = ("epoch", "batch", "samples", "lr", "sparsity")
    for a, b in zip(one_process_steps, steps, strict=True):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)


def _cifar_args(beton, folder):
    return [f"--data.train_dataset={beton}", f"--logging.folder={folder}", "--training.epochs=1",
            "--training.device=cpu", "--data.num_workers=1", "--cram.sparsities=0.5",
            "--lr.warmup_epochs=0"]


def test_another_global_batch_without_lr_scaling_is_refused_before_any_work(train_beton, tmp_path):
    proc = _train("train_cifar.py", 1, *_cifar_args(train_beton, tmp_path / "run"),
                  "--training.global_batch_size=64")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: --training.global_batch_size=64 differs from the global batch 128 that --lr.lr=0.1 "
        "belongs to (--lr.batch_size); say how the learning rate follows: --lr.scaling=linear "
        "(lr 0.05) | sqrt (lr 0.07071) | none (lr 0.1)")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_scaled_run_says_so_and_records_the_effective_lr(train_beton, tmp_path):
    folder = tmp_path / "run"
    proc = _train("train_cifar.py", 1, *_cifar_args(train_beton, folder),
                  "--training.global_batch_size=64", "--lr.scaling=linear")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("batch: 64 global = 64 per process x 1 processes; lr 0.05 (--lr.lr=0.1 belongs to a "
            "global batch of 128; linear scaling)") in proc.stdout
    assert json.loads((folder / "config.json").read_text())["batch_plan"]["lr"] == 0.05
    assert _lines(folder / "log.jsonl")[0]["lr"] == 0.05  # cosine, once per epoch: epoch 0's


def test_step_log_writes_each_step_and_keeps_those_before_a_resume_point(tmp_path):
    import torch
    from ffcv_cram.runtime.dist import Context
    from ffcv_cram.train.step_log import StepLog
    log = StepLog(str(tmp_path), True, Context())
    for batch, loss in enumerate((2.0, 1.5, 1.0)):
        log.add(0, batch, torch.tensor(loss), 8, 0.1, "0.5" if batch else None)
    assert not (tmp_path / "steps.jsonl").exists()  # the losses wait on the device until a flush
    log.flush()
    assert [{k: v for k, v in line.items() if k != "img_s"} for line in _lines(tmp_path / "steps.jsonl")] == [
        {"epoch": 0, "batch": b, "steps": 1, "lr": 0.1, "sparsity": s, "samples": 8, "loss": loss}
        for b, s, loss in ((0, None, 2.0), (1, "0.5", 1.5), (2, "0.5", 1.0))]
    log.keep_before(0, 2)  # resumed at batch 2 of epoch 0: that step runs again
    assert [line["batch"] for line in _lines(tmp_path / "steps.jsonl")] == [0, 1]
    StepLog(str(tmp_path / "off"), False, Context()).flush()
    assert not (tmp_path / "off").exists()
