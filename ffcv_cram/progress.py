"""Progress of long-running work: a live tqdm bar on a terminal, plain lines everywhere else.

tqdm redraws its bar with carriage returns. In a file (CI, `nohup`, a scheduler's log) every
redraw stays, and a log "line" grows to hundreds of kilobytes. So when the bar's stream is not a
terminal, `bar` writes a plain line at every tenth of the work instead, at most one per
`min_interval` seconds (short phases print nothing: their callers print a summary line), and a
closing line after a phase that printed any. Jupyter keeps its own widget bars.

Imports nothing but tqdm, so every layer may use it.
"""
from __future__ import annotations

import sys
import time

from tqdm import auto as tqdm_auto

# tqdm.auto picked its widget bar: we run in Jupyter, whose output is no terminal but redraws well
IN_NOTEBOOK = getattr(tqdm_auto, "notebook_tqdm", tqdm_auto.std_tqdm) is not tqdm_auto.std_tqdm

MIN_INTERVAL = 20.0  # seconds between two plain lines of one phase


def is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


class LineProgress:
    """tqdm's calls that we use (update, set_postfix, close, n), written as plain lines."""

    def __init__(self, total: int | None, desc: str, initial: int, stream, unit: str,
                 min_interval: float):
        self.total, self.desc, self.n, self.stream, self.unit = total, desc, initial, stream, unit
        self.min_interval = min_interval
        self.start = self.last = time.monotonic()
        self.tenth = self._tenth()
        self.printed = False
        self.postfix = ""

    def _tenth(self) -> int:
        return 10 * self.n // self.total if self.total else 0

    def _line(self, elapsed: float) -> str:
        done = (f"{100 * self.n // self.total}% ({self.n}/{self.total} {self.unit})" if self.total
                else f"{self.n} {self.unit}")
        return f"{self.desc}: {done}, {elapsed:.0f} s{self.postfix}"

    def _write(self, now: float) -> None:
        self.stream.write(self._line(now - self.start) + "\n")
        self.stream.flush()
        self.last, self.printed = now, True

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        tenth = self._tenth()
        due = tenth > self.tenth if self.total else True
        if due and now - self.last >= self.min_interval and self.n != self.total:
            self.tenth = tenth
            self._write(now)

    def set_postfix(self, **values) -> None:
        self.postfix = "".join(f", {k} {v}" for k, v in values.items())

    def close(self) -> None:
        if self.printed:  # a long phase says that it ended; a short one left no line to close
            self._write(time.monotonic())
            self.printed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Silent(LineProgress):
    def _write(self, now: float) -> None:
        pass


def bar(total: int | None = None, desc: str = "", *, enabled: bool = True, initial: int = 0,
        unit: str = "it", stream=None, min_interval: float = MIN_INTERVAL):
    """A progress bar: tqdm on a terminal (or in Jupyter), `LineProgress` elsewhere, silent when
    not `enabled` (e.g. on every rank but the first). Written to `stream` (default: stderr)."""
    stream = stream or sys.stderr
    if not enabled:
        return _Silent(total, desc, initial, stream, unit, min_interval)
    if is_terminal(stream) or IN_NOTEBOOK:
        return tqdm_auto.tqdm(total=total, desc=desc, initial=initial, unit=unit, leave=False,
                         dynamic_ncols=True, file=stream)
    return LineProgress(total, desc, initial, stream, unit, min_interval)


def track(iterable, desc: str = "", *, enabled: bool = True, total: int | None = None, **kwargs):
    """Iterate `iterable` with a `bar` (total: len(iterable) when it has one)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    progress = bar(total, desc, enabled=enabled, **kwargs)
    try:
        for item in iterable:
            yield item
            progress.update(1)
    finally:
        progress.close()
