"""Extending a run (finished or interrupted) to more epochs: the same command with a larger
--training.epochs resumes it instead of being refused as another configuration.

The learning-rate semantics: everything computed from training.epochs (the cosine's end when
--lr.end_epoch=0, the cyclic schedule's way down, the ramp of --cram.ramp) is recomputed for the
new total, and from the resumed step on the run follows it: the learning rate at each later step
is the one a run of the new length has at that step. The epochs already trained stay as they
were. A finished cosine run therefore restarts at the new schedule's value at its last epoch
(e.g. 3 -> 6 epochs: lr * (1 + cos(pi * 3/6)) / 2 = half the peak) and decays to 0 at the new
end. Fewer epochs are refused: the epochs already trained followed the longer schedule.

Each extension is kept in the run's configuration (config.json and its checkpoints), section
`extension`, key `history`: [{from_epochs, to_epochs, at_epoch, at_batch}, ...].
"""
from __future__ import annotations

from ..config import UsageError

KEY = "training.epochs"
SECTION = "extension"


def remaining_differences(saved: dict, current: dict, differences: list[str], folder: str) -> list[str]:
    """`differences` (from `loop.config_differences`) without those an extension makes: more
    epochs and the recorded history. Raises UsageError for fewer epochs."""
    rest = [d for d in differences if d.split(".")[0] != SECTION]
    if KEY not in rest:
        return rest
    before, now = saved["training"]["epochs"], current["training"]["epochs"]
    if now < before:
        raise UsageError(f"--training.epochs={now}: {folder} holds a run of {before} epochs, which "
                         f"can be extended but not shortened; use --training.epochs={before} or "
                         "more, or another --logging.folder")
    return [d for d in rest if d != KEY]


def with_history(cfg: dict, saved: dict | None, at_epoch: int, at_batch: int) -> tuple[dict, dict | None]:
    """`cfg` carrying the saved run's extension history, plus this start's extension if it is
    one; and that extension (None: this start extends nothing)."""
    if saved is None:
        return cfg, None
    history = list(saved.get(SECTION, {}).get("history", []))
    before, now = saved["training"]["epochs"], cfg["training"]["epochs"]
    extension = None
    if now != before:
        extension = {"from_epochs": before, "to_epochs": now, "at_epoch": at_epoch,
                     "at_batch": at_batch}
        history.append(extension)
    return ({**cfg, SECTION: {"history": history}} if history else cfg), extension


def announcement(extension: dict, lr_now: float) -> str:
    """The start line of an extension."""
    return (f"extending the run from {extension['from_epochs']} to {extension['to_epochs']} epochs "
            f"at epoch {extension['at_epoch']}, batch {extension['at_batch']}: the learning-rate "
            f"schedule is recomputed for {extension['to_epochs']} epochs and followed from here "
            f"(lr {lr_now:.4g} now); the epochs already trained are kept as they were")
