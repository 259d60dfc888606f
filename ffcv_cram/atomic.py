"""Writes that matter happen atomically: to a temporary name in the same folder, then renamed."""
from __future__ import annotations

import os
import tempfile


def _temporary(path: str):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would surprise whoever reads the file
    return tmp


def _commit(tmp: str, path: str, write) -> None:
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    _commit(_temporary(path), path, write)


def torch_save(obj, path: str) -> None:
    import torch
    _commit(_temporary(path), path, lambda tmp: torch.save(obj, tmp))
