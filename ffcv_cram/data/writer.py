"""Writing .beton files with a process pool that survives bad data.

The output is FFCV's own format, built from FFCV's fields (`image`: RGBImageField, `label`:
IntField), page allocator and file-format types, so any FFCV loader (ffcv-imagenet's included) reads
it. What differs from `ffcv.writer.DatasetWriter`:
- an unreadable image is skipped and reported, or stops the run at once naming the file; the
  .beton holds exactly the readable samples, in order (bad rows are compacted out at the end);
- a failing worker stops the run with its error (DatasetWriter's main loop waits forever);
- the file is written under a temporary name and renamed only when complete;
- `proportion` draws JPEG-or-raw per sample from a seeded generator (DatasetWriter uses the
  global NumPy RNG, identical in every forked worker), and `smart` decides from the raw size
  without JPEG-encoding every image first.
"""
from __future__ import annotations

import glob
import multiprocessing as mp
import os
import queue
import signal
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing import shared_memory

import numpy as np
from ffcv.fields import IntField, RGBImageField
from ffcv.fields.rgb_image import resizer
from ffcv.memory_allocator import MemoryAllocator
from ffcv.types import (ALLOC_TABLE_TYPE, CURRENT_VERSION, TYPE_ID_HANDLER, FieldDescType,
                        HeaderType, get_metadata_type)

from ..progress import bar as progress_bar
from .encoding import Encoding
from .images import BadImage

MAX_SIDE = 0xFFFF  # FFCV stores width and height as uint16


class BetonWriteError(Exception):
    """The conversion could not complete; the message says why (one line)."""


@dataclass
class WriteResult:
    path: str
    written: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    bytes: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return (self.written + len(self.skipped)) / self.seconds if self.seconds else 0.0


def _fields(encoding: Encoding) -> dict:
    return {"image": RGBImageField(write_mode="raw", jpeg_quality=encoding.jpeg_quality),
            "label": IntField()}


def _worker(jobs, events, done, shm_name, metadata_dtype, num_samples, allocator, source,
            encoding, stop_on_bad):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    shm = shared_memory.SharedMemory(name=shm_name)
    metadata = np.ndarray(num_samples, dtype=metadata_dtype, buffer=shm.buf)
    try:
        image_rows, label_rows = (metadata[name] for name in metadata_dtype.names)
        raw = RGBImageField(write_mode="raw")
        jpeg = RGBImageField(write_mode="jpg", jpeg_quality=encoding.jpeg_quality)
        labels = IntField()
        with allocator:
            while (chunk := jobs.get()) is not None:
                for dest, src in chunk:
                    try:
                        image = resizer(source.load(src), encoding.max_resolution)
                        if max(image.shape[:2]) > MAX_SIDE:
                            raise BadImage(f"{image.shape[1]}x{image.shape[0]} px is larger than "
                                           f"{MAX_SIDE} px; set --cfg.max_resolution")
                    except BadImage as err:
                        events.put(("bad", dest, src, str(err)))
                        if stop_on_bad:
                            return
                        continue
                    image_field = jpeg if encoding.as_jpeg(int(src), image) else raw
                    for attempt in (0, 1):  # a sample that overflows its page restarts on a fresh one
                        try:
                            allocator.set_current_sample(dest)
                            image_field.encode(image_rows[dest:dest + 1], image, allocator.malloc)
                            labels.encode(label_rows[dest:dest + 1], int(source.labels[src]),
                                          allocator.malloc)
                            break
                        except MemoryError:
                            if attempt:
                                raise
                with done.get_lock():
                    done.value += len(chunk)
        events.put(("allocations", allocator.allocations))
    except BaseException:
        events.put(("error", traceback.format_exc()))
    finally:
        del image_rows, label_rows, metadata  # release the buffer before closing the mapping
        shm.close()


def _write_layout(tmp, fields, num_samples, page_size):
    header = np.zeros(1, dtype=HeaderType)[0]
    header["version"], header["num_fields"] = CURRENT_VERSION, len(fields)
    header["page_size"], header["num_samples"] = page_size, num_samples
    descriptors = np.zeros(len(fields), dtype=FieldDescType)
    type_ids = {handler: type_id for type_id, handler in TYPE_ID_HANDLER.items()}
    for i, (name, fld) in enumerate(fields.items()):
        descriptors[i]["type_id"] = type_ids[type(fld)]
        encoded = np.frombuffer(name.encode("ascii"), dtype="<u1")
        descriptors[i]["name"][:len(encoded)] = encoded
        descriptors[i]["arguments"][:] = fld.to_binary()[0]
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(descriptors.tobytes())
    return header, HeaderType.itemsize + descriptors.nbytes


def _finalize(tmp, header, metadata_start, metadata, valid, allocations):
    """Keep only the readable samples: compact metadata rows and renumber the allocation table."""
    new_id = np.cumsum(valid) - 1
    table = (np.array(allocations, dtype=ALLOC_TABLE_TYPE) if allocations
             else np.zeros(0, dtype=ALLOC_TABLE_TYPE))
    table = table[valid[table["sample_id"].astype(np.int64)]]
    table["sample_id"] = new_id[table["sample_id"].astype(np.int64)]
    with open(tmp, "r+b") as f:
        f.seek(metadata_start)
        f.write(metadata[valid].tobytes())
        table_ptr = f.seek(0, os.SEEK_END)
        f.write(table.tobytes())
        header["num_samples"], header["alloc_table_ptr"] = int(valid.sum()), table_ptr
        f.seek(0)
        f.write(header.tobytes())
        f.flush()
        os.fsync(f.fileno())


def _remove_stale_partials(path: str) -> None:
    """Temporary files left by runs that were killed outright (SIGKILL, power loss)."""
    for tmp in glob.glob(glob.escape(path) + ".partial-*"):
        pid = tmp.rsplit("-", 1)[-1]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            os.remove(tmp)


def _context():
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def write_beton(path: str, source, indices, encoding: Encoding, num_workers: int = 0,
                chunk_size: int = 100, on_bad_image: str = "skip", progress: bool = True
                ) -> WriteResult:
    """Write samples `indices` of `source` to `path` (atomically). Returns counts and timing."""
    encoding.check()
    if on_bad_image not in ("skip", "fail"):
        raise ValueError(f"on_bad_image={on_bad_image!r}: must be 'skip' or 'fail'")
    indices = np.asarray(indices, dtype=np.int64)
    n = len(indices)
    if n == 0:
        raise BetonWriteError("nothing to write: the selection is empty")
    num_workers = max(1, min(num_workers or os.cpu_count() or 1, -(-n // chunk_size)))
    _remove_stale_partials(path)
    tmp = f"{path}.partial-{os.getpid()}"
    fields = _fields(encoding)
    metadata_dtype = get_metadata_type(list(fields.values()))
    page_size = encoding.page_size()
    start = time.perf_counter()
    header, metadata_start = _write_layout(tmp, fields, n, page_size)
    shm = shared_memory.SharedMemory(create=True, size=max(1, n * metadata_dtype.itemsize))
    ctx = _context()
    workers: list = []
    bar = progress_bar(n, f"writing {os.path.basename(path)}", enabled=progress, unit="img")
    try:
        allocator = MemoryAllocator(tmp, metadata_start + n * metadata_dtype.itemsize, page_size)
        jobs, events, done = ctx.Queue(), ctx.Queue(), ctx.Value("Q", 0)
        pairs = list(enumerate(indices.tolist()))
        for i in range(0, n, chunk_size):
            jobs.put(pairs[i:i + chunk_size])
        for _ in range(num_workers):
            jobs.put(None)
        args = (jobs, events, done, shm.name, metadata_dtype, n, allocator, source, encoding,
                on_bad_image == "fail")
        workers = [ctx.Process(target=_worker, args=args, daemon=True) for _ in range(num_workers)]
        for w in workers:
            w.start()
        bad, allocations, finished = {}, [], 0
        while finished < num_workers:
            try:
                kind, *payload = events.get(timeout=0.2)
            except queue.Empty:
                dead = [w for w in workers if w.exitcode not in (None, 0)]
                if dead:
                    raise BetonWriteError(f"a writer process died (exit code {dead[0].exitcode}); "
                                          "out of memory? try fewer --cfg.num_workers")
                bar.update(done.value - bar.n)
                continue
            if kind == "bad":
                dest, src, reason = payload
                if on_bad_image == "fail":
                    raise BetonWriteError(f"{source.describe(src)}: {reason} (use "
                                          "--cfg.on_bad_image=skip to skip unreadable images)")
                bad[dest] = (source.describe(src), reason)
            elif kind == "error":
                raise BetonWriteError(f"a writer process failed:\n{payload[0]}")
            else:
                allocations.extend(payload[0])
                finished += 1
            bar.update(done.value - bar.n)
        bar.update(n - bar.n)
        for w in workers:
            w.join()
        valid = np.ones(n, dtype=bool)
        valid[list(bad)] = False
        if not valid.any():
            raise BetonWriteError(f"no readable image among the {n} files (first: "
                                  f"{next(iter(bad.values()))[0]}: {next(iter(bad.values()))[1]})")
        metadata = np.ndarray(n, dtype=metadata_dtype, buffer=shm.buf).copy()
        _finalize(tmp, header, metadata_start, metadata, valid, allocations)
        result = WriteResult(path, int(valid.sum()), [bad[d] for d in sorted(bad)],
                             os.path.getsize(tmp), time.perf_counter() - start)
        os.replace(tmp, path)
        return result
    finally:
        bar.close()
        for w in workers:
            if w.is_alive():
                w.terminate()
        for w in workers:
            w.join(timeout=5)
        shm.close()
        shm.unlink()
        if os.path.exists(tmp):
            os.remove(tmp)
