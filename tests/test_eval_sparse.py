"""eval_sparse.py and the demo (fixture `demo`, in conftest.py): sweep outputs, checkpoint formats,
refusals, BNT's mechanism."""
import copy
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ffcv_cram.data.convert import convert
from ffcv_cram.data.loader_options import LoaderOptions
from ffcv_cram.data.pipelines import ImageLoader
from ffcv_cram.data.synthetic import generate
from ffcv_cram.models import get_model
from ffcv_cram.sparsity import prune_model, tune_batchnorm
from ffcv_cram.train.schedule import lr_at
from ffcv_cram.train.optimizer_options import OptimizerOptions
from ffcv_cram.train.step import TrainStep, make_optimizer
from indexed import write_indexed

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "offline"}


def eval_sparse(*argv, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "eval_sparse.py"), *argv], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=ENV)


@pytest.mark.slow
@pytest.mark.xdist_group("demo")  # one worker builds the demo fixture, for both tests
def test_demo_outputs_agree_with_the_printed_table(demo):
    out, stdout = demo
    rows = json.loads((out / "sweep" / "results.json").read_text())
    assert len(rows) == 12  # 2 checkpoints x (5 global sparsities + 2:4)
    required = {"label", "checkpoint", "method", "sparsity", "pattern", "dense_top1", "dense_top5",
                "pruned_top1", "pruned_top5", "bnt_top1", "bnt_top5", "achieved_sparsity",
                "model_sparsity"}
    assert all(required <= set(r) for r in rows)
    with open(out / "sweep" / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    for r, c in zip(rows, table):
        assert c["label"] == r["label"] and float(c["bnt_top1"]) == pytest.approx(r["bnt_top1"])
        line = f"{r['pruned_top1']:.1f} / {r['bnt_top1']:.1f}"
        assert line in stdout  # the summary printed at the end shows every row
        if r["pattern"] is None:
            assert r["achieved_sparsity"] == pytest.approx(r["sparsity"], abs=1e-5)
        else:
            assert r["pattern"] == "2:4" and r["achieved_sparsity"] == 0.5
    image = Image.open(out / "sweep" / "accuracy_vs_sparsity.png")
    image.verify()
    assert image.format == "PNG"
    assert "$ python train_cifar.py" in stdout and "plot:" in stdout
    # every command's output (writer, trainers, sweep) went to a pipe: no progress-bar frames
    log = (out / "demo.log").read_bytes()
    assert b"\r" not in log and b"$ python eval_sparse.py" in log
    assert b"Traceback" not in log and b"Exception ignored" not in log  # nothing failed


@pytest.mark.slow
@pytest.mark.xdist_group("demo")
def test_every_checkpoint_format_gives_the_same_result(demo, tmp_path):
    out, _ = demo
    plain = torch.load(out / "runs" / "cram" / "final_weights.pt", weights_only=True)
    torch.save({f"module.{k}": v for k, v in plain.items()}, tmp_path / "ddp.pt")
    torch.save({"epoch": 2, "model_config": {"arch": "resnet20"}, "model_state_dict": plain,
                "optimizer": {"state_dict": {}}, "lr_scheduler": {}}, tmp_path / "reference.pt")
    paths = [out / "runs/cram/final_weights.pt", out / "runs/cram/checkpoint_last.pt",
             tmp_path / "ddp.pt", tmp_path / "reference.pt"]
    proc = eval_sparse("--eval.checkpoint=" + ",".join(map(str, paths)),
                       "--eval.labels=plain,ours,ddp,reference", "--model.arch=resnet20",
                       "--data.style=cifar", f"--data.val_dataset={out / 'val.beton'}",
                       f"--data.train_dataset={out / 'train.beton'}", "--bnt.calib_size=40",
                       "--bnt.batches=2", "--prune.method=nm", "--prune.nm=2:4",
                       "--eval.device=cpu", "--out.save_pruned=1", f"--out.dir={tmp_path / 'o'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "o" / "results.json").read_text())
    assert len({(r["dense_top1"], r["pruned_top1"], r["bnt_top1"]) for r in rows}) == 1
    saved = torch.load(tmp_path / "o" / "pruned" / "plain_nm2-4.pt", weights_only=True)
    for name, mask in saved["masks"].items():  # the N:M pattern holds in every pruned layer
        w = saved["state_dict"][name]
        groups = (w.movedim(1, -1) if w.dim() > 2 else w).reshape(-1, 4)
        assert bool(((groups != 0).sum(1) <= 2).all()) and torch.equal(w != 0, mask)


@pytest.mark.parametrize("argv,message", [
    (["--model.arch=resnet18_cifar"], "does not fit --model.arch=resnet18_cifar: missing"),
    (["--model.num_classes=2"], "holds label 3 but the model has 2 classes"),
    (["--prune.sparsities=0.5,1.0"], "1.0 is outside [0, 1)"),
    (["--prune.method=nm", "--prune.nm=5:4"], "N must"),
    (["--prune.method=magnitude"], "--prune.method='magnitude'"),
    (["--data.train_dataset=x.beton"], "exactly one of"),
    (["--eval.labels=a,b"], "2 labels for 1 checkpoints"),
    (["--bnt.momentum=fast"], "--bnt.momentum='fast'"),
    (["--eval.compile_mode=max-autotune-no-cudagraphs"], "needs --eval.compile=1"),
])
def test_refusals_before_any_work(data, tmp_path, run_main, argv, message):
    """A ResNet-20 of 4 classes and a 4-class dataset (labels 0-3): weights do not matter here."""
    torch.save(get_model("resnet20", 4).state_dict(), tmp_path / "weights.pt")
    base = [f"--eval.checkpoint={tmp_path / 'weights.pt'}", "--model.arch=resnet20",
            "--data.style=cifar", f"--data.val_dataset={data['val']}",
            f"--data.calib_dataset={data['train']}", f"--out.dir={tmp_path / 'o'}"]
    code, _, stderr = run_main("eval_sparse.py", *base, *argv)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0], stderr
    assert not (tmp_path / "o").exists()


def test_missing_checkpoint_is_refused(tmp_path):
    proc = eval_sparse(f"--eval.checkpoint={tmp_path / 'none.pt'}", "--model.arch=resnet20",
                       "--model.num_classes=10", f"--data.val_dataset={tmp_path / 'v.beton'}",
                       f"--data.calib_dataset={tmp_path / 'c.beton'}", f"--out.dir={tmp_path / 'o'}")
    assert proc.returncode == 2 and "no such file" in proc.stderr


def calibration_loss(model, batches) -> float:
    model.eval()
    with torch.no_grad():
        return sum(float(F.cross_entropy(model(x), y)) for x, y in batches) / len(batches)


def batchnorm_input_statistics(model, batches) -> dict:
    """Per BatchNorm: the mean over `batches` of its input's per-channel mean and unbiased
    variance, read off the model's train-mode forward (which normalises with batch statistics,
    so no running statistic takes part)."""
    model = copy.deepcopy(model).train()
    seen = {}

    def record(name):
        def hook(module, inputs):
            x = inputs[0].float()
            seen.setdefault(name, []).append((x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)))
        return hook
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.register_forward_pre_hook(record(name))
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    return {name: tuple(torch.stack(v).mean(0) for v in zip(*stats)) for name, stats in seen.items()}


@pytest.mark.slow
def test_bnt_recomputes_statistics_of_the_pruned_model_and_lowers_calibration_loss(tmp_path):
    """BNT's mechanism, not where one training trajectory lands: after pruning, every BN's running
    statistics are those of the pruned model's own activations on the calibration batches (and
    no longer the dense model's), and the calibration loss falls. Real loaders, a ResNet-20
    trained 6 epochs on generated shapes (10 classes), 80 % global pruning."""
    generate(tmp_path / "shapes", classes=10, train_per_class=200, val_per_class=1, size=32)
    convert("folder", "train", str(tmp_path / "shapes" / "train"), str(tmp_path / "train.beton"),
            progress=False)
    torch.manual_seed(0)
    train = ImageLoader(str(tmp_path / "train.beton"), train=True, batch_size=64,
                        options=LoaderOptions(style="cifar", num_workers=1))
    model = get_model("resnet20", 10).to(memory_format=torch.channels_last)
    opt = make_optimizer(model.parameters(),
                         OptimizerOptions(method="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4))
    step = TrainStep(model, opt, "sgd")
    epochs = 6
    for epoch in range(epochs):
        model.train()
        train.set_epoch(epoch)
        for i, (x, y) in enumerate(train):
            opt.param_groups[0]["lr"] = lr_at(epoch + i / len(train), schedule="cosine", lr=0.1,
                                              epochs=epochs, warmup_epochs=1)
            step(x, y)
    calibration = [(x.clone(), y.clone()) for x, y in train][:10]
    dense = calibration_loss(model, calibration)
    dense_means = {n: m.running_mean.clone() for n, m in model.named_modules()
                   if isinstance(m, torch.nn.BatchNorm2d)}
    prune_model(model, "global", 0.8)
    pruned = calibration_loss(model, calibration)
    expected = batchnorm_input_statistics(model, calibration)
    tune_batchnorm(model, calibration, num_batches=len(calibration), momentum=None)
    tuned = calibration_loss(model, calibration)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            mean, var = expected[name]
            assert torch.allclose(m.running_mean, mean, rtol=1e-4, atol=1e-5), name
            assert torch.allclose(m.running_var, var, rtol=1e-4, atol=1e-5), name
            assert not torch.allclose(m.running_mean, dense_means[name], rtol=1e-2, atol=1e-3)
    print(f"calibration loss dense {dense:.3f}, pruned to 80 % {pruned:.3f}, after BNT {tuned:.3f}")
    # BNT wins back most of the loss pruning added. Measured with this recipe for seeds 0-9 (model
    # init and data order; a standalone run of the same steps): pruning added 0.45-4.7 to the
    # calibration loss and BNT won back 70-93 % of it (this test, on this machine: 92 %)
    assert pruned > dense and pruned - tuned >= 0.5 * (pruned - dense), (dense, pruned, tuned)


def test_last_batches_of_one_sample(tmp_path):
    """13 images in evaluation batches of 4 (4 + 4 + 4 + 1) and calibration batches of 4: the
    last batch holds one sample, in evaluation and in BN tuning. Every image counts once."""
    beton = write_indexed(tmp_path / "val.beton", 13)
    torch.manual_seed(0)
    model = get_model("resnet20", 13).to(memory_format=torch.channels_last)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    proc = eval_sparse(f"--eval.checkpoint={tmp_path / 'weights.pt'}", "--model.arch=resnet20",
                       "--model.num_classes=13", "--data.style=cifar", f"--data.val_dataset={beton}",
                       f"--data.calib_dataset={beton}", "--data.num_workers=1", "--eval.batch_size=4",
                       "--bnt.batch_size=4", "--bnt.batches=4", "--prune.sparsities=0.5",
                       "--eval.device=cpu", f"--out.dir={tmp_path / 'o'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((tmp_path / "o" / "results.json").read_text())[0]
    model.eval()
    with torch.no_grad():  # one image at a time: no batching at all
        hits = sum(int(model(x).argmax(1) == y) for x, y in ImageLoader(
            beton, train=False, batch_size=1, options=LoaderOptions(style="cifar", num_workers=1)))
    assert row["dense_top1"] == pytest.approx(100 * hits / 13)
