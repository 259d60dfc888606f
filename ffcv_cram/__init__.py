"""ffcv-cram: CrAM training on FFCV pipelines, and one-shot pruning sweeps."""
from .optim import (SAM, CosineLR, NMTopkCrAM, TopkCrAM, disable_running_stats,
                    enable_running_stats)

__version__ = "0.1.0"
__all__ = ["TopkCrAM", "NMTopkCrAM", "SAM", "CosineLR", "disable_running_stats",
           "enable_running_stats"]
