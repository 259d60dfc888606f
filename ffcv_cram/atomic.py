"""Writes that matter happen atomically: to a temporary name in the same folder, flushed to the
disk, then renamed over the old file. A write the system refuses (disk full, file too large, no
permission) leaves the old file as it was and raises AtomicWriteError, one line for the user."""
from __future__ import annotations

import os
import tempfile


class AtomicWriteError(Exception):
    """The system refused a write; the file written before (if any) is intact."""


def _temporary(path: str):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would surprise whoever reads the file
    return tmp


def remove_stale_temporaries(folder: str) -> list[str]:
    """Delete what a process killed in the middle of a write left in `folder` (our temporary
    names: `.<file>.<random>.tmp`); returns their names. Only for folders no one else writes
    into at the same time, e.g. a run folder before its run starts writing."""
    stale = [name for name in os.listdir(folder) if name.startswith(".") and name.endswith(".tmp")
             and os.path.isfile(os.path.join(folder, name))] if os.path.isdir(folder) else []
    for name in stale:
        os.remove(os.path.join(folder, name))
    return stale


def _refused(path: str, err: OSError) -> AtomicWriteError:
    return AtomicWriteError(f"{path}: cannot be written ({err.strerror or err}); the previous "
                      f"{os.path.basename(path)}, if any, is kept; free disk space or fix the "
                      "folder's permissions, then re-run")


def _commit(path: str, write) -> None:
    """`write(file)` into a temporary file, make it durable, then rename it to `path`."""
    tmp = None
    try:
        tmp = _temporary(path)
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())  # the rename must never publish a file not yet on the disk
        os.replace(tmp, path)
    except OSError as err:
        raise _refused(path, err) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str) -> None:
    _commit(path, lambda file: file.write(text.encode()))


class _KeepsWriteErrors:
    """torch.save reports a failed write() of a file object as a RuntimeError that has lost the
    OSError (which says why: disk full, file too large); this keeps it."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data):
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self):
        self.file.flush()


def torch_save(obj, path: str) -> None:
    import torch

    def write(file):
        recorder = _KeepsWriteErrors(file)
        try:
            torch.save(obj, recorder)
        except RuntimeError:
            if recorder.error is not None:
                raise recorder.error from None
            raise
    _commit(path, write)


def write_bytes(path: str, data: bytes) -> None:
    _commit(path, lambda file: file.write(data))
