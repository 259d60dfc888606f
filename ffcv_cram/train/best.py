"""--checkpoint.keep_best=1: best.pt, the checkpoint of the epoch with the highest validation
top-1 so far (the earliest on ties), written atomically when an epoch beats it.

best.pt is a checkpoint like checkpoint_last.pt at the end of that epoch; its `best` entry (and
that of every later checkpoint, so that a resumed run keeps comparing with it) holds the epoch and
its validation top-1.
"""
from __future__ import annotations

import os

FILE = "best.pt"


class BestCheckpoint:
    def __init__(self, folder: str, enabled: bool, saved: dict | None):
        """`saved`: the `best` entry of the checkpoint the run resumes from (None: none). It counts
        only while its best.pt is still there."""
        self.path, self.enabled = os.path.join(folder, FILE), enabled
        self.record = saved if enabled and saved and os.path.exists(self.path) else None

    def improved(self, record: dict) -> bool:
        """Whether the epoch's log `record` beats the best so far (then it becomes the best)."""
        if not self.enabled or "val_top1" not in record:
            return False
        if self.record is not None and record["val_top1"] <= self.record["val_top1"]:
            return False
        self.record = {"epoch": record["epoch"], "val_top1": record["val_top1"]}
        return True
