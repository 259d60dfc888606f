"""python -m ffcv_cram.plot_training: the series drawn are the run's logged values (read back
from the figure, not pixels); a folder without a log is refused with one line."""
import json

import pytest

from ffcv_cram.plot_training import main
from ffcv_cram.training_curves import curve_series, draw, extension_lines, read_run

EPOCHS = [{"epoch": e, "train_loss": 2.0 - e / 2, "train_top1": 30.0 + 10 * e, "lr": 0.1 / (e + 1),
           "images_per_s": 100.0 + e, **({"val_top1": 40.0 + e, "val_loss": 1.5} if e != 1 else {})}
          for e in range(3)]
# two lines per epoch (every 2 of 4 steps); the run was extended from 2 to 3 epochs
STEPS = [{"epoch": e, "batch": b, "steps": 2, "samples": 64, "lr": 0.1 - 0.01 * (2 * e + b // 2),
          "sparsity": None, "loss": 3.0 - e - b / 10, "img_s": 90.0 + b} for e in range(3) for b in (1, 3)]
EXTENSION = {"from_epochs": 2, "to_epochs": 3, "at_epoch": 2, "at_batch": 0}


def _run(folder, epochs=EPOCHS, steps=STEPS):
    folder.mkdir()
    (folder / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in epochs))
    if steps is not None:
        (folder / "steps.jsonl").write_text("".join(json.dumps(line) + "\n" for line in steps))
    (folder / "config.json").write_text(json.dumps({"extension": {"history": [EXTENSION]}}))
    return folder


def test_the_series_are_the_logged_values_at_their_epochs(tmp_path):
    epochs, steps, extensions = read_run(str(_run(tmp_path / "run")))
    series = {s.label: s for s in curve_series(epochs, steps)}
    step_x = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)  # the end of each line's last step, 4 steps an epoch
    assert series["train loss (every 2 steps)"].x == step_x
    assert series["train loss (every 2 steps)"].y == tuple(s["loss"] for s in STEPS)
    assert series["lr (steps)"].y == tuple(s["lr"] for s in STEPS)
    assert series["img/s (steps)"].y == tuple(s["img_s"] for s in STEPS)
    assert series["train loss (epoch)"].x == (1, 2, 3)  # an epoch's line at its end
    assert series["train top-1"].y == (30.0, 40.0, 50.0)
    assert series["val top-1"].x == (1, 3) and series["val top-1"].y == (40.0, 42.0)  # validated
    assert series["img/s (epoch)"].y == (100.0, 101.0, 102.0)
    assert {s.panel for s in series.values()} == {"loss", "top-1 (%)", "learning rate", "images / s"}
    assert extension_lines(extensions, steps) == [(2.0, "extended 2 -> 3 epochs")]


def test_without_steps_jsonl_the_lr_comes_from_the_epoch_lines(tmp_path):
    epochs, steps, _ = read_run(str(_run(tmp_path / "run", steps=None)))
    series = {s.label: s for s in curve_series(epochs, steps)}
    assert series["lr (epoch's last step)"].y == (0.1, 0.05, 0.1 / 3)
    assert not [label for label in series if "steps" in label]


def test_the_figure_draws_those_series_and_the_extension(tmp_path):
    epochs, steps, extensions = read_run(str(_run(tmp_path / "run")))
    series = curve_series(epochs, steps)
    fig = draw(series, extension_lines(extensions, steps))
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "top-1 (%)", "learning rate", "images / s"]
    for ax in fig.axes:
        drawn = {line.get_label(): line for line in ax.get_lines()}
        for s in series:
            if s.panel == ax.get_ylabel():
                assert tuple(drawn[s.label].get_xdata()) == s.x
                assert tuple(drawn[s.label].get_ydata()) == s.y
        assert tuple(drawn["extended 2 -> 3 epochs"].get_xdata()) == (2.0, 2.0)


def test_the_command_writes_the_png(tmp_path, capsys):
    run = _run(tmp_path / "run")
    assert main([str(run)]) == 0
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([str(run), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").is_file() and f"wrote {tmp_path}/c.png" in capsys.readouterr().out


@pytest.mark.parametrize("case,message", [
    ("no folder", "{run}: no such folder; give the --logging.folder of a training run"),
    ("no log", "{run}: no log.jsonl; give the --logging.folder of a training run"),
    ("empty log", "{run}/log.jsonl: empty: the run has not finished an epoch yet"),
    ("damaged", "{run}/log.jsonl line 2: not a JSON object; the file is damaged"),
    ("no epoch", "{run}/log.jsonl line 1: no epoch; the file is damaged"),
    ("bad config", "{run}/config.json: not the JSON object a run writes; the file is damaged"),
])
def test_a_folder_without_a_log_is_refused_with_one_line(tmp_path, capsys, case, message):
    run = tmp_path / "run"
    if case != "no folder":
        run.mkdir()
    logs = {"empty log": "", "damaged": '{"epoch": 0}\n{"epo\n{}\n', "no epoch": "{}\n",
            "bad config": '{"epoch": 0}\n'}
    if case in logs:
        (run / "log.jsonl").write_text(logs[case])
    if case == "bad config":
        (run / "config.json").write_text('{"training": ')
    with pytest.raises(SystemExit) as stop:
        main([str(run)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1
    assert lines[0].startswith("error: " + message.format(run=run))
    assert not (run / "curves.png").exists()
