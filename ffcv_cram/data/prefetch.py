"""Produce batches ahead of the caller, in a background thread on a side CUDA stream.

While the caller trains, the producer decodes and augments the next `depth` batches (FFCV reads
the bytes in its own threads; the decoders release the GIL while they work). After enqueuing a
batch's work on its stream the producer records a CUDA event and hands the batch over with it;
the caller's stream waits on the event (a wait on the GPU, not on the host) and the tensors are
recorded on the caller's stream, so that the caching allocator does not give their memory back
to the producer while the caller's kernels still read it. Memory stays bounded: the producer
starts a batch only while fewer than `depth` finished batches wait for the caller, so at most
depth + 1 batches exist (the caller's and the waiting ones).

FFCV reuses the host buffer of batch i once the producer asks it for batch i + 1; nothing reads
that buffer after the batch's own producer call returns (the decoders read the bytes during
their call, host pixels are copied into the loader's pinned buffers), so no GPU work still in
flight depends on it. Without CUDA the same thread and hand-over run, minus streams and events.

`sync_handover=True` is the earlier hand-over, kept for the benchmark's reference: the producer
synchronises its stream before handing a batch over (a host wait per batch), no event.
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


def prefetch(make_batches: Callable[[], Iterator[tuple]], device: torch.device, depth: int = 2,
             sync_handover: bool = False) -> Iterator[tuple]:
    """Iterate the tuples of tensors that `make_batches()` yields, produced up to `depth` batches
    ahead of the caller. Exceptions of the producer are raised here; leaving the loop early stops
    the producer (and closes the generator, which stops FFCV's reader)."""
    if depth < 1:
        raise ValueError(f"depth={depth}: must be >= 1")
    device = torch.device(device)
    ready: queue.Queue = queue.Queue()
    may_start = threading.Semaphore(depth)
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
                    done = None
                    if stream is not None and batch is not _END:
                        if sync_handover:
                            stream.synchronize()
                        else:
                            done = torch.cuda.Event()
                            done.record(stream)
                    ready.put((batch, done))
                    if batch is _END:
                        return
        except BaseException as err:  # handed to the caller, raised there
            ready.put((_Failure(err), None))
        finally:
            if batches is not None:
                batches.close()

    worker = threading.Thread(target=produce, name="ffcv-cram-device-batches", daemon=True)
    worker.start()
    caller_stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    try:
        while True:
            item, done = ready.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            if caller_stream is not None:
                if done is not None:
                    caller_stream.wait_event(done)
                for tensor in item:
                    tensor.record_stream(caller_stream)
            may_start.release()
            yield item
    finally:
        stop.set()
        may_start.release()
        worker.join()
