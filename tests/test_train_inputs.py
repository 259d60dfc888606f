"""The trainer's input files are checked first: a wrong path is named, with its option and the fix,
before anything is inferred from it (exit 2, nothing written)."""
import pytest


def args(data, folder):
    return [f"--data.train_dataset={data['train']}", f"--data.val_dataset={data['val']}",
            f"--logging.folder={folder}", "--training.epochs=1", "--training.device=cpu", "--lr.warmup_epochs=0"]


@pytest.mark.parametrize("override,message", [
    ("--data.train_dataset={tmp}/nope.beton", "--data.train_dataset={tmp}/nope.beton: no such file; "
     "check the path, or write the .beton with write_datasets.py"),
    ("--data.train_dataset={tmp}", "--data.train_dataset={tmp}: a folder, not a file"),
    ("--data.val_dataset={tmp}/val.beton", "--data.val_dataset={tmp}/val.beton: no such file; "
     "check the path, write the .beton with write_datasets.py, or pass --data.val_dataset= to "
     "skip evaluation"),
    ("--training.init_weights={tmp}/w.pt", "--training.init_weights={tmp}/w.pt: no such file"),
])
def test_a_missing_input_file_is_named_first(data, tmp_path, run_main, override, message):
    code, _, stderr = run_main("train_cifar.py", *args(data, tmp_path / "run"),
                               override.format(tmp=tmp_path))
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message.format(tmp=tmp_path)}")
    assert "classes.json" not in stderr  # not the class count inferred from a missing file
    assert not (tmp_path / "run").exists()


def test_keeping_the_best_checkpoint_needs_validation(data, tmp_path, run_main):
    code, _, stderr = run_main("train_cifar.py", *args(data, tmp_path / "run"),
                               "--data.val_dataset=", "--checkpoint.keep_best=1")
    assert code == 2 and "--checkpoint.keep_best=1 keeps the epoch with the best validation " \
                         "top-1; give --data.val_dataset" in stderr
    assert not (tmp_path / "run").exists()
