"""Produce batches one ahead of the caller, in a background thread on a side CUDA stream.

While the caller trains on batch i, the producer decodes and augments batch i+1 (FFCV reads the
bytes in its own threads; torchvision's calls release the GIL). Memory stays bounded: the
producer starts a batch only once the caller has taken the previous one, so two batches exist at
a time (the caller's and the next). The producer synchronises its stream before handing a batch
over, so the batch is complete when the caller sees it and the FFCV host buffers it was read
from can be reused. The tensors are then recorded on the caller's stream, so that the caching
allocator does not give their memory back to the producer while the caller's kernels still read
it. Without CUDA the same thread and hand-over run, minus the streams.
"""
from __future__ import annotations

import contextlib
import queue
import threading
from typing import Callable, Iterator

import torch

_END = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


@contextlib.contextmanager
def _side_stream(device: torch.device):
    if device.type != "cuda":
        yield None
        return
    with torch.cuda.device(device):  # the current device is per thread
        stream = torch.cuda.Stream(device)
        with torch.cuda.stream(stream):
            yield stream


def prefetch(make_batches: Callable[[], Iterator[tuple]], device: torch.device) -> Iterator[tuple]:
    """Iterate the tuples of tensors that `make_batches()` yields, produced one batch ahead."""
    ready: queue.Queue = queue.Queue()
    may_start = threading.Semaphore(1)
    stop = threading.Event()

    def produce():
        batches = None
        try:
            with _side_stream(device) as stream:
                batches = make_batches()
                while True:
                    may_start.acquire()
                    if stop.is_set():
                        return
                    batch = next(batches, _END)
                    if stream is not None:
                        stream.synchronize()
                    ready.put(batch)
                    if batch is _END:
                        return
        except BaseException as err:  # handed to the caller, raised there
            ready.put(_Failure(err))
        finally:
            if batches is not None:
                batches.close()

    worker = threading.Thread(target=produce, name="ffcv-cram-device-batches", daemon=True)
    worker.start()
    caller_stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    try:
        while (item := ready.get()) is not _END:
            if isinstance(item, _Failure):
                raise item.error
            if caller_stream is not None:
                for tensor in item:
                    tensor.record_stream(caller_stream)
            may_start.release()
            yield item
    finally:
        stop.set()
        may_start.release()
        worker.join()
