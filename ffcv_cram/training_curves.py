"""Training curves of a run folder: log.jsonl (one line per epoch) and, when the run wrote it,
steps.jsonl (one line every N steps), drawn as loss, top-1, learning rate and img/s over epochs.

`curve_series` decides what is drawn (tested directly), `draw` only lays it out. The x axis is
in epochs: an epoch's log line sits at its end (epoch + 1), a steps.jsonl line at the end of its
last step. An extension of the run (config.json's `extension` section) is a vertical line.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass

from .atomic import write_bytes
from .config import UsageError
from .json_lines import read_json_lines

PANELS = ("loss", "top-1 (%)", "learning rate", "images / s")
EPOCH_LOG, STEP_LOG, CONFIG = "log.jsonl", "steps.jsonl", "config.json"


@dataclass(frozen=True)
class Series:
    panel: str  # one of PANELS
    label: str  # the legend entry
    x: tuple  # epochs
    y: tuple
    linestyle: str = "-"
    marker: str = ""


def read_run(folder: str) -> tuple[list[dict], list[dict], list[dict]]:
    """(epoch lines, step lines, extensions) of the run in `folder`, refused with one line when
    it holds nothing to draw."""
    epochs_path = os.path.join(folder, EPOCH_LOG)
    if not os.path.isfile(epochs_path):
        raise UsageError(f"{folder}: no {EPOCH_LOG}; give the --logging.folder of a training run")
    epochs = read_json_lines(epochs_path, ("epoch",))
    steps = read_json_lines(os.path.join(folder, STEP_LOG), ("epoch", "batch", "steps"))
    if not epochs and not steps:
        raise UsageError(f"{epochs_path}: empty: the run has not finished an epoch yet (with "
                         f"--logging.steps=N it also writes {STEP_LOG} during an epoch)")
    config = os.path.join(folder, CONFIG)
    extensions = []
    if os.path.isfile(config):
        try:
            with open(config) as f:
                extensions = json.load(f).get("extension", {}).get("history", [])
        except (json.JSONDecodeError, AttributeError):
            raise UsageError(f"{config}: not the JSON object a run writes; the file is "
                             "damaged") from None
    return epochs, steps, extensions


def _steps_per_epoch(steps: list[dict]) -> int:
    """An epoch's last line ends at its last step (a line ends at each epoch's end)."""
    return max(line["batch"] for line in steps) + 1


def curve_series(epochs: list[dict], steps: list[dict]) -> list[Series]:
    """What is drawn, panel by panel: step lines thin, epoch lines with markers."""
    series = []

    def add(panel, label, lines, key, x, **style):
        points = [(x(line), line[key]) for line in lines if line.get(key) is not None]
        if points:
            xs, ys = zip(*points)
            series.append(Series(panel, label, xs, ys, **style))

    if steps:
        iters = _steps_per_epoch(steps)
        at_step = lambda line: line["epoch"] + (line["batch"] + 1) / iters
        every = max(line["steps"] for line in steps)
        add("loss", f"train loss (every {every} steps)", steps, "loss", at_step)
    at_end = lambda line: line["epoch"] + 1
    add("loss", "train loss (epoch)", epochs, "train_loss", at_end, marker="o")
    add("loss", "val loss", epochs, "val_loss", at_end, marker="s")
    add("top-1 (%)", "train top-1", epochs, "train_top1", at_end, marker="o")
    add("top-1 (%)", "val top-1", epochs, "val_top1", at_end, marker="s")
    if steps:
        add("learning rate", "lr (steps)", steps, "lr", at_step)
        add("images / s", "img/s (steps)", steps, "img_s", at_step)
    else:
        add("learning rate", "lr (epoch's last step)", epochs, "lr", at_end, marker="o")
    add("images / s", "img/s (epoch)", epochs, "images_per_s", at_end, marker="o")
    return series


def extension_lines(extensions: list[dict], steps: list[dict]) -> list[tuple[float, str]]:
    """(x, label) of each extension: where the run resumed with more epochs."""
    iters = _steps_per_epoch(steps) if steps else None
    return [(e["at_epoch"] + (e["at_batch"] / iters if iters else 0),
             f"extended {e['from_epochs']} -> {e['to_epochs']} epochs") for e in extensions]


def draw(series: list[Series], extensions: list[tuple[float, str]] = (), title: str = ""):
    """The figure (matplotlib, Agg): one panel per PANELS entry that has a series."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    panels = [p for p in PANELS if any(s.panel == p for s in series)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels)), dpi=110,
                             sharex=True, squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        for s in series:
            if s.panel == panel:
                ax.plot(s.x, s.y, linestyle=s.linestyle, marker=s.marker, label=s.label,
                        linewidth=0.8 if not s.marker else 1.5, markersize=4)
        for x, label in extensions:
            ax.axvline(x, color="grey", linestyle=":", linewidth=1, label=label)
        ax.set_ylabel(panel)
        if panel == "loss":  # a first epoch's loss can be far above the rest
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[-1, 0].set_xlabel("epoch")
    axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot(folder: str, out: str) -> list[Series]:
    """Draw the run in `folder` into the PNG `out` (atomically); returns the series drawn."""
    epochs, steps, extensions = read_run(folder)
    series = curve_series(epochs, steps)
    name = os.path.basename(os.path.normpath(folder))
    fig = draw(series, extension_lines(extensions, steps), f"training curves of {name}")
    from matplotlib import pyplot as plt  # after draw() chose the Agg backend
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    write_bytes(out, png.getvalue())
    return series
