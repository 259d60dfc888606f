"""Working memory of the batched crop + resize (decode='gpu'), measured on CPU tensors."""
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ffcv_cram.data.gpu_augment import chunk_bytes, crop_chunks, resized_crops
from ffcv_cram.data.seeded_crops import random_crops_and_flips


class PeakBytes(TorchDispatchMode):
    """The most bytes of tensor storage alive at once among those that torch ops allocated
    inside the block (storages that existed before, such as the input images, are not counted)."""

    def __init__(self, existing=()):
        super().__init__()
        self.known = {t.untyped_storage().data_ptr() for t in existing}
        self.live, self.now, self.peak = {}, 0, 0

    def _freed(self, key):
        self.now -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key and key not in self.known and key not in self.live:
                self.live[key] = storage.nbytes()
                self.now += storage.nbytes()
                self.peak = max(self.peak, self.now)
                weakref.finalize(storage, self._freed, key)
        return out


def peak_bytes(fn, existing):
    with PeakBytes(existing) as tracker:
        result = fn()
        peak = tracker.peak
    return result, peak


def test_the_tracker_sees_the_peak_not_the_total():
    def work():
        a = torch.ones(1000, 1000)  # 4 MB
        b = a * 2                   # 8 MB alive
        del a
        return b + 1                # 8 MB alive again (b and the result)
    _, peak = peak_bytes(work, ())
    assert peak == 8_000_000


def test_chunks_cover_every_crop_once_and_fit_the_budget():
    rng = np.random.default_rng(0)
    heights = rng.integers(8, 900, 200)
    widths = rng.integers(8, 900, 200)
    heights[:3], widths[:3] = 4000, 3000  # full-size photos: alone over the budget
    budget = 64 * 2**20
    chunks = crop_chunks(heights, widths, 224, budget)
    assert sorted(np.concatenate(chunks).tolist()) == list(range(200))
    for chunk in chunks:
        cost = chunk_bytes(len(chunk), heights[chunk].max(), widths[chunk].max(), 224)
        assert cost <= budget or len(chunk) == 1
    assert [len(c) for c in chunks[:3]] == [1, 1, 1]
    padded = sum(len(c) * heights[c].max() * widths[c].max() for c in chunks)
    assert padded < 2 * (heights * widths).sum()  # similar sizes share a chunk: little padding
    assert len(crop_chunks(heights, widths, 224, 2**62)) == 1


def _batch(sizes, seed=0):
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in sizes]
    heights, widths = np.array(sizes).T
    return (images, *random_crops_and_flips(seed, 0, np.arange(len(sizes)), heights, widths))


def test_chunked_equals_all_at_once_and_the_reference():
    sizes = [(300, 200), (37, 50), (120, 90), (250, 310), (64, 64), (200, 31), (15, 300), (9, 9)]
    images, boxes, flips = _batch(sizes, seed=1)  # boxes that make three chunks
    for size in (12, 61):
        whole = resized_crops(images, boxes, size, flips, max_bytes=2**62)
        chunked = resized_crops(images, boxes, size, flips, max_bytes=chunk_bytes(2, 150, 150, size))
        assert len(crop_chunks(boxes[:, 2], boxes[:, 3], size, chunk_bytes(2, 150, 150, size))) > 2
        assert chunked.shape == whole.shape == (len(sizes), 3, size, size)
        assert torch.allclose(chunked, whole, rtol=0, atol=1e-3), (chunked - whole).abs().max()
        for k, (image, (top, left, h, w)) in enumerate(zip(images, boxes)):
            crop = image[None, :, top:top + h, left:left + w].float()
            want = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True,
                                 align_corners=False)[0]
            want = want.flip(-1) if flips[k] else want
            assert torch.allclose(chunked[k], want, atol=2e-3), (size, k)


def test_working_memory_stays_within_the_budget():
    """Four large crops and many small ones: all at once, every crop is padded to the largest."""
    sizes = [(480, 640)] * 4 + [(60, 80)] * 28
    images, _, flips = _batch(sizes, seed=1)
    boxes = np.array([[0, 0, h, w] for h, w in sizes])  # whole images
    size = 32
    output = len(sizes) * 3 * size * size * 4
    budget = chunk_bytes(2, 480, 640, size)  # two large crops at a time
    whole, peak_whole = peak_bytes(lambda: resized_crops(images, boxes, size, flips, 2**62), images)
    chunked, peak = peak_bytes(lambda: resized_crops(images, boxes, size, flips, budget), images)
    assert torch.allclose(chunked, whole, rtol=0, atol=1e-3)
    assert peak <= output + budget, (peak, output + budget)
    assert peak_whole > 8 * budget  # 32 crops padded to 480 x 640 (the hazard)
    assert peak_whole <= chunk_bytes(len(sizes), 480, 640, size)  # and the model is an upper bound


@pytest.mark.cuda
def test_cuda_allocator_peak_stays_within_the_budget():
    sizes = [(1500, 2000)] * 4 + [(300, 400)] * 60
    images, _, flips = _batch(sizes, seed=2)
    images = [image.cuda() for image in images]
    boxes = np.array([[0, 0, h, w] for h, w in sizes])
    size, budget = 224, 64 * 2**20
    output = len(sizes) * 3 * size * size * 4

    def peak(max_bytes):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = resized_crops(images, boxes, size, flips, max_bytes)
        torch.cuda.synchronize()
        return out, torch.cuda.max_memory_allocated() - base

    whole, peak_whole = peak(2**62)
    chunked, peak_chunked = peak(budget)
    largest_alone = chunk_bytes(1, 1500, 2000, size)  # over the budget: goes alone
    assert peak_chunked <= output + max(budget, largest_alone) * 1.01, peak_chunked
    assert peak_whole > 10 * max(budget, largest_alone)
    assert torch.allclose(chunked, whole, rtol=0, atol=1e-3)
