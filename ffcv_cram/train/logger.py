"""What a run leaves in its folder: config.json, log.jsonl (one line per epoch), wandb."""
from __future__ import annotations

import json
import os
import secrets

from ..atomic import write_text
from ..json_lines import read_json_lines
from ..progress import bar as progress_bar


class RunLogger:
    """Only the main rank writes; other ranks get silent no-ops."""

    def __init__(self, folder: str, config: dict, is_main: bool, wandb_project: str | None = None,
                 wandb_mode: str = "offline", wandb_name: str | None = None):
        self.folder, self.is_main = folder, is_main
        self.log_path = os.path.join(folder, "log.jsonl")
        self.wandb = None
        if not is_main:
            return
        os.makedirs(folder, exist_ok=True)
        write_text(os.path.join(folder, "config.json"), json.dumps(config, indent=2) + "\n")
        if wandb_project and wandb_mode != "disabled":
            import wandb
            id_file = os.path.join(folder, "wandb_id.txt")  # the same wandb run when resumed
            run_id = open(id_file).read().strip() if os.path.exists(id_file) else secrets.token_hex(4)
            write_text(id_file, run_id + "\n")
            self.wandb = wandb.init(project=wandb_project, name=wandb_name, id=run_id, resume="allow",
                                    dir=folder, mode=wandb_mode, config=config)

    def keep_epochs_before(self, epoch: int) -> None:
        """On resume: drop log lines of epochs that will be run again."""
        if not self.is_main or not os.path.exists(self.log_path):
            return
        kept = [record for record in read_json_lines(self.log_path, ("epoch",))
                if record["epoch"] < epoch]
        write_text(self.log_path, "".join(json.dumps(record) + "\n" for record in kept))

    def bar(self, total: int, desc: str, initial: int = 0):
        return progress_bar(total, desc, initial=initial, enabled=self.is_main, unit="steps")

    def log_epoch(self, record: dict) -> None:
        if not self.is_main:
            return
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.wandb is not None:
            self.wandb.log(record, step=record["epoch"])

    def summary(self, record: dict) -> None:
        if self.wandb is not None:
            self.wandb.summary.update(record)

    def finish(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
