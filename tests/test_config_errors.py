"""The strict config layer as a user meets it: every unknown key at once with the key probably
meant, ffcv-imagenet's YAML files read as ours, and a quick plain-text --help."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLIS = ["train_cifar.py", "train_imagenet.py", "eval_sparse.py", "write_datasets.py"]

# ffcv-imagenet's published ResNet-50 88-epoch recipe, key for key as that project writes it
FFCV_IMAGENET_RN50 = """\
data:
  in_memory: 1
  num_workers: 12
dist:
  world_size: 8
logging:
  folder: /tmp/
lr:
  lr: 1.7
  lr_schedule_type: cyclic
  lr_peak_epoch: 3
model:
  arch: resnet50
resolution:
  end_ramp: 76
  max_res: 192
  min_res: 160
  start_ramp: 65
training:
  batch_size: 512
  bn_wd: 0
  distributed: 1
  epochs: 88
  label_smoothing: 0.1
  momentum: 0.9
  optimizer: sgd
  weight_decay: 0.0001
  use_blurpool: 1
validation:
  lr_tta: true
  resolution: 256
"""


def errors(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_a_command_line_typo_gets_the_key_it_meant(run_main):
    code, out, stderr = run_main("train_cifar.py", "--training.optimzer=sgd")
    assert code == 2 and out == ""
    assert "error: unknown key --training.optimzer (did you mean --training.optimizer?)" in stderr


def test_every_mistake_on_the_command_line_is_reported_at_once(run_main):
    code, _, stderr = run_main("train_cifar.py", "--trainng.epochs=3", "--model.flip_tta=1",
                               "--training.amp=fp8", "--cram.interval=0", "stray", "--cram.rho")
    found = errors(stderr)
    assert code == 2 and "Traceback" not in stderr
    for expected in ("'stray': not an option",
                     "unknown key --trainng.epochs (did you mean --training.epochs?)",
                     "unknown key --model.flip_tta (did you mean --validation.flip_tta?)",
                     "--training.amp='fp8'", "--cram.interval='0'",
                     "--cram.rho: expected a value (--cram.rho=VALUE)",
                     "--data.train_dataset is required", "--logging.folder is required"):
        assert sum(expected in line for line in found) == 1, (expected, stderr)
    assert len(found) == 8


def test_unknown_keys_in_a_yaml_file_are_reported_together(run_main, tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("training:\n  epoch: 3\n  optimizer: sgd\nmodle:\n  arch: resnet20\n"
                      "cram:\n  sparsity: [0.5]\n")
    code, _, stderr = run_main("train_cifar.py", f"--config-file={config}",
                               "--data.train_dataset=t.beton", "--logging.folder=run")
    assert code == 2 and errors(stderr) == [
        f"error: {config}: unknown key 'training.epoch' (did you mean 'training.epochs'?)",
        f"error: {config}: unknown key 'modle.arch' (did you mean 'model.arch'?)",
        f"error: {config}: unknown key 'cram.sparsity' (did you mean 'cram.sparsities'?)"]


def test_a_key_of_no_likeness_lists_what_its_section_holds(run_main):
    code, _, stderr = run_main("write_datasets.py", "--cfg.colour=1")
    line = next(line for line in errors(stderr) if "cfg.colour" in line)
    assert code == 2 and "keys of section 'cfg': " in line and "write_path" in line


def test_the_cifar_trainer_refuses_resolution_keys_naming_why(run_main, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("resolution:\n  min_res: 160\n  max_res: 192\n")
    code, _, stderr = run_main("train_cifar.py", f"-C={config}", "--resolution.val_rs=64",
                               "--data.train_dataset=t.beton", "--logging.folder=run")
    assert code == 2 and errors(stderr) == [
        f"error: {config}: 'resolution.min_res', 'resolution.max_res': the cifar style trains at "
        "the stored resolution; resolution.* is for train_imagenet.py",
        "error: --resolution.val_rs: the cifar style trains at the stored resolution; "
        "resolution.* is for train_imagenet.py"]


@pytest.fixture
def parse_imagenet():
    """train_imagenet.py's parse (its defaults, its aliases) on a fresh fastargs configuration."""
    from fastargs import set_current_config
    from fastargs.config import Config
    from ffcv_cram.train.cli import parse_args
    import runpy

    defaults = runpy.run_path(str(ROOT / "train_imagenet.py"), run_name="defaults")["DEFAULTS"]
    set_current_config(Config())
    yield lambda *argv: parse_args("imagenet", "train", defaults, list(argv))
    set_current_config(Config())


def test_an_ffcv_imagenet_yaml_is_read_as_ours(parse_imagenet, tmp_path, capsys):
    theirs = tmp_path / "rn50_88_epochs.yaml"
    theirs.write_text(FFCV_IMAGENET_RN50)
    cfg = parse_imagenet(f"--config-file={theirs}", "--data.train_dataset=t.beton",
                         "--data.val_dataset=v.beton", "--logging.folder=run")
    assert cfg["training"]["global_batch_size"] == 4096 and cfg["lr"]["batch_size"] == 4096
    assert (cfg["lr"]["schedule"], cfg["lr"]["per_iteration"], cfg["lr"]["peak_epoch"]) == \
        ("cyclic", True, 3) and cfg["lr"]["lr"] == 1.7
    assert cfg["model"]["blurpool"] is True and cfg["training"]["decay_bn_and_bias"] is False
    assert cfg["validation"]["flip_tta"] is True and cfg["resolution"]["val_res"] == 256
    assert (cfg["resolution"]["min_res"], cfg["resolution"]["max_res"]) == (160, 192)
    assert cfg["data"]["num_workers"] == 12 and cfg["logging"]["folder"] == "run"
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "training.batch_size 512 x dist.world_size 8 -> " \
        "training.global_batch_size 4096" in notes[0]
    assert "ignored: training.distributed" in notes[0]


def test_ffcv_imagenet_keys_whose_meaning_differs_are_refused(parse_imagenet, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_imagenet("--lr.lr_schedule_type=step", "--training.batch_size=256",
                       "--model.use_blurpool=1", "--model.blurpool=1", "--lr.lr_peak_epoc=2",
                       "--data.train_dataset=t.beton", "--logging.folder=run")
    found = errors(capsys.readouterr().err)
    assert stop.value.code == 2 and len(found) == 4, found
    assert "lr.lr_schedule_type=step: ffcv-imagenet's step schedule slides" in found[0]
    assert any("training.batch_size=256: ffcv-imagenet's batch is per GPU" in f for f in found)
    assert any("model.use_blurpool (ffcv-imagenet's name for model.blurpool) and model.blurpool "
               "both given" in f for f in found)
    assert "unknown key --lr.lr_peak_epoc (did you mean --lr.peak_epoch?)" in found[-1]


def test_our_own_yaml_keeps_its_logging_folder(parse_imagenet, tmp_path):
    ours = tmp_path / "ours.yaml"
    ours.write_text("logging:\n  folder: runs/a\ntraining:\n  epochs: 3\n")
    cfg = parse_imagenet(f"-C={ours}", "--data.train_dataset=t.beton")
    assert cfg["logging"]["folder"] == "runs/a" and cfg["training"]["epochs"] == 3


@pytest.mark.parametrize("script", CLIS)
def test_help_is_plain_text_even_beside_mistakes(run_main, script):
    code, out, stderr = run_main(script, "--data.train_dataset=x", "--no.such=1", "--help")
    assert code == 0 and stderr == "" and out.startswith("usage: ")
    assert "\x1b" not in out and not any(ord(c) > 127 for c in out)  # no escapes, no box lines


def test_help_lists_only_the_keys_a_script_accepts(run_main):
    _, cifar, _ = run_main("train_cifar.py", "--help")
    _, imagenet, _ = run_main("train_imagenet.py", "--help")
    assert "--resolution." not in cifar and "--resolution.min_res" in imagenet
    assert "--training.optimizer  (one of cram | cram_nm | sam | sgd; default cram)" in cifar
    assert "--data.train_dataset  (text; required)" in cifar


def test_help_answers_before_torch_is_imported():
    """A fresh interpreter: --help must not pay for torch (seconds on a loaded machine)."""
    probe = ("import runpy, sys; sys.argv = ['train_imagenet.py', '--help']\n"
             "try:\n    runpy.run_path('train_imagenet.py', run_name='__main__')\n"
             "except SystemExit as stop:\n    code = stop.code\n"
             "print('torch' in sys.modules, code, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.stderr.strip().splitlines()[-1] == "False 0", proc.stderr
