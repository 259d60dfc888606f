"""Start an epoch part-way through (a resumed epoch): the traversal order less the batches trained.

FFCV reads and decodes only the samples of the order it is handed, so the skipped batches are
never read. The epoch's full order is drawn first and cut into batches as FFCV would cut it, so
the remaining batches are exactly those of the uninterrupted epoch.
"""
from __future__ import annotations

from ffcv.traversal_order.base import TraversalOrder


class StartAtBatch(TraversalOrder):
    """Wraps a loader's traversal order; `start_batch` applies to every epoch until reset to 0."""

    def __init__(self, loader, order: TraversalOrder):
        super().__init__(loader)
        self.order = order
        self.start_batch = 0

    def sample_order(self, epoch: int):
        order = self.order.sample_order(epoch)
        if not self.start_batch:
            return order
        batch_size = self.loader.batch_size
        whole_batches = order[:len(self.loader) * batch_size]  # drop_last's cut, if any
        return whole_batches[self.start_batch * batch_size:]
