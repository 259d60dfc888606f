"""A run started from given weights (--training.init_weights), keeping best.pt, then extended to
more epochs: the weights it starts from, the learning rate at every step before and after the
extension, the history in config.json, and the checkpoint (not the weights) a resumed run reads."""
import json

import pytest
import torch

from ffcv_cram.models import get_model
from ffcv_cram.train.checkpoint import load_checkpoint
from ffcv_cram.train.schedule import lr_at

LR = 1e-9  # the weights stay (to float precision) those the run started from


def _args(data, folder, epochs, init):
    return [f"--data.train_dataset={data['train']}", f"--data.val_dataset={data['val']}",
            f"--logging.folder={folder}", f"--training.epochs={epochs}", "--training.device=cpu",
            "--training.global_batch_size=32", "--lr.scaling=none", f"--lr.lr={LR}",
            "--lr.warmup_epochs=0", "--lr.per_iteration=1", "--training.optimizer=sgd",
            "--data.resident=1", "--data.num_workers=1", "--logging.steps=1",
            "--checkpoint.keep_best=1", "--checkpoint.every=1", f"--training.init_weights={init}"]


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _lr(epoch, epochs):
    return lr_at(epoch, schedule="cosine", lr=LR, epochs=epochs)


@pytest.mark.slow
def test_started_from_given_weights_then_extended_with_the_schedule_of_the_new_length(
        data, tmp_path, run_main):
    torch.manual_seed(1)
    given = get_model("resnet20", 4).state_dict()
    init = tmp_path / "reference.pt"  # the reference CrAM layout, DDP-prefixed
    torch.save({"epoch": 200, "model_state_dict": {f"module.{k}": v for k, v in given.items()}}, init)
    folder = tmp_path / "run"

    code, out, err = run_main("train_cifar.py", *_args(data, folder, 2, init))
    assert code == 0, err
    assert f"starting from the weights in {init}" in out
    assert json.loads((folder / "config.json").read_text())["training"]["init_weights"] == str(init)
    trained = torch.load(folder / "final_weights.pt", weights_only=True)
    weights = [k for k, v in given.items() if v.dim() > 1]  # conv and linear (BN statistics move)
    assert "fc.weight" in weights and len(weights) > 10
    for key in weights:
        torch.testing.assert_close(trained[key], given[key], rtol=0, atol=1e-6)

    init.unlink()  # the extension resumes from the run's checkpoint and never reads the init file
    code, out, err = run_main("train_cifar.py", *_args(data, folder, 3, init))
    assert code == 0, err
    assert "starting from the weights" not in out
    assert (f"extending the run from 2 to 3 epochs at epoch 2, batch 0: the learning-rate schedule "
            f"is recomputed for 3 epochs and followed from here (lr {_lr(2, 3):.4g} now)") in out
    steps = _lines(folder / "steps.jsonl")
    assert [(s["epoch"], s["batch"]) for s in steps] == [(e, b) for e in range(3) for b in range(6)]
    for s in steps:  # epochs 0-1 as trained (2 epochs), epoch 2 on the schedule of 3 epochs
        position = s["epoch"] + s["batch"] / 6
        assert s["lr"] == pytest.approx(_lr(position, 2 if s["epoch"] < 2 else 3), rel=1e-12)
    assert json.loads((folder / "config.json").read_text())["extension"] == {
        "history": [{"from_epochs": 2, "to_epochs": 3, "at_epoch": 2, "at_batch": 0}]}
    log = _lines(folder / "log.jsonl")
    assert [line["epoch"] for line in log] == [0, 1, 2]

    top1 = [line["val_top1"] for line in log]  # best.pt: the first epoch with the highest top-1
    epoch = top1.index(max(top1))
    best = load_checkpoint(str(folder / "best.pt"))
    assert best["best"] == {"epoch": epoch, "val_top1": max(top1)}
    assert load_checkpoint(str(folder / "checkpoint_last.pt"))["best"] == best["best"]
    same_epoch = load_checkpoint(str(folder / f"checkpoint_epoch{epoch + 1}.pt"))
    assert all(torch.equal(v, same_epoch["model"][k]) for k, v in best["model"].items())

    code, _, err = run_main("train_cifar.py", *_args(data, folder, 2, init))
    assert code == 2 and (f"error: --training.epochs=2: {folder} holds a run of 3 epochs, which "
                          "can be extended but not shortened") in err
