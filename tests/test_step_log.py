"""steps.jsonl with --logging.steps=N: a line every N steps (and at an epoch's end or a mid-epoch
checkpoint) with the mean loss of its samples, its img/s, and its last step's lr and draw."""
import json

import torch

from ffcv_cram.runtime.dist import Context
from ffcv_cram.train.step_log import StepLog


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_line_every_n_steps_and_at_the_epochs_end(tmp_path):
    log = StepLog(str(tmp_path), 2, Context())
    log.start()
    losses = [4.0, 2.0, 3.0, 1.0, 5.0]  # 5 steps of an epoch: lines of 2, 2 and 1 steps
    for batch, loss in enumerate(losses):
        log.add(0, batch, torch.tensor(loss), 8 if batch else 24, 0.1 * (5 - batch), f"0.{batch}")
    log.flush()  # the epoch's end
    lines = _lines(tmp_path / "steps.jsonl")
    assert [{k: v for k, v in line.items() if k != "img_s"} for line in lines] == [
        {"epoch": 0, "batch": 1, "steps": 2, "samples": 32, "loss": (4.0 * 24 + 2.0 * 8) / 32,
         "lr": 0.1 * 4, "sparsity": "0.1"},
        {"epoch": 0, "batch": 3, "steps": 2, "samples": 16, "loss": 2.0, "lr": 0.1 * 2,
         "sparsity": "0.3"},
        {"epoch": 0, "batch": 4, "steps": 1, "samples": 8, "loss": 5.0, "lr": 0.1, "sparsity": "0.4"}]
    assert all(line["img_s"] > 0 for line in lines)


def test_off_it_writes_nothing(tmp_path):
    log = StepLog(str(tmp_path / "off"), 0, Context())
    log.add(0, 0, torch.tensor(1.0), 8, 0.1, None)
    log.flush()
    assert not (tmp_path / "off").exists()


def test_on_resume_a_half_written_last_line_is_dropped_with_the_steps_run_again(tmp_path):
    """A trainer killed while appending leaves a line without its newline: resuming drops it with
    the lines of the steps it runs again, and keeps the rest."""
    lines = [{"epoch": 0, "batch": b, "steps": 1, "loss": 1.0} for b in range(4)]
    (tmp_path / "steps.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in lines) + '{"epoch": 0, "ba')
    StepLog(str(tmp_path), 1, Context()).keep_before(0, 2)
    assert _lines(tmp_path / "steps.jsonl") == lines[:2]
