"""The demo's output folder: `demo.json` records which steps an earlier run finished there, so a
second run resumes instead of starting over; any other non-empty folder is refused, never deleted."""
from __future__ import annotations

import json
from pathlib import Path

from .atomic import write_text

MARKER = "demo.json"


class FolderRefused(Exception):
    """An --out the demo must not write into; the message says why and what to do."""


class DemoFolder:
    """What the demo finished in `path` (written after each finished step)."""

    def __init__(self, path: Path, size: str, finished: list[str]):
        self.path, self.size, self.finished = path, size, finished

    @classmethod
    def open(cls, path: Path, size: str) -> "DemoFolder":
        """An earlier demo folder of the same `size` ('quick' or 'full'), or a new or empty
        folder (created and marked); anything else raises FolderRefused."""
        marker = path / MARKER
        if path.exists() and not path.is_dir():
            raise FolderRefused(f"{path}: not a folder; choose another --out")
        if marker.is_file():
            try:
                state = json.loads(marker.read_text())
                size_was, finished = state["size"], list(state["finished"])
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise FolderRefused(f"{marker}: unreadable ({err}); remove {path} or choose "
                                    "another --out") from None
            if size_was != size:
                flag = "with --quick" if size_was == "quick" else "without --quick"
                raise FolderRefused(f"{path}: holds a {size_was} demo; resume it {flag}, or "
                                    "choose another --out")
            return cls(path, size, finished)
        if path.is_dir() and any(path.iterdir()):
            raise FolderRefused(f"{path}: not empty and not a demo folder (no {MARKER}); choose a "
                                "new or empty --out")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise FolderRefused(f"{path}: cannot be created ({err.strerror or err}); choose "
                                "another --out") from None
        folder = cls(path, size, [])
        folder._save()  # first: from now on a second run knows the folder as the demo's
        return folder

    def done(self, step: str) -> bool:
        return step in self.finished

    def finish(self, step: str) -> None:
        self.finished.append(step)
        self._save()

    def _save(self) -> None:
        write_text(str(self.path / MARKER),
                   json.dumps({"size": self.size, "finished": self.finished}, indent=1) + "\n")
