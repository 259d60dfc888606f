"""The pruning library: masks (the one selection implementation), one-shot pruning and batch-norm
tuning. It imports nothing from the optimizers, the trainer, the data pipelines or the sweep
application built on it (tests/test_layers.py holds it to that)."""
from .bnt import tune_batchnorm
from .masks import magnitude_masks, nm_masks, parse_pattern, prunable_weights, prune_count
from .prune import SparsityReport, apply_masks, prune_model, uniform_targets

__all__ = ["magnitude_masks", "nm_masks", "parse_pattern", "prunable_weights", "prune_count",
           "prune_model", "apply_masks", "uniform_targets", "SparsityReport", "tune_batchnorm"]
