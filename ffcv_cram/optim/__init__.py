"""Two-pass optimizers (SAM, CrAM), the cosine schedule and the BatchNorm switch."""
from .bn import disable_running_stats, enable_running_stats
from .cram import NMTopkCrAM, TopkCrAM
from .sam import SAM
from .schedules import CosineLR
from .two_pass import TwoPassOptimizer

__all__ = ["TopkCrAM", "NMTopkCrAM", "SAM", "CosineLR", "TwoPassOptimizer",
           "disable_running_stats", "enable_running_stats"]
