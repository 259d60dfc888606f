"""The trained part of an epoch, summed over all ranks: what a mid-epoch checkpoint adds.

A resumed epoch adds its own totals to these, so its log line carries the whole epoch's loss,
top-1, draws and skipped steps. Plain numbers only, so that the checkpoint stays loadable with
`weights_only=True`.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field


@dataclass
class EpochSoFar:
    batch: int = 0              # batches of the epoch already trained (0: at its start)
    world_size: int = 1         # processes that trained them (the shards depend on it)
    loss_sum: float = 0.0       # sum of loss x batch size
    correct: float = 0.0        # top-1 hits
    samples: int = 0
    skipped: int = 0            # fp16 steps skipped (counted per rank, as in the log line)
    decode_fallbacks: int = 0
    decode_failures: int = 0
    seconds: float = 0.0        # training time of those batches (not the restart)
    draws: dict[str, int] = field(default_factory=dict)  # sparsity draws (the same on every rank)

    def extended(self, batch: int, sums: list[float], draws: Counter, seconds: float) -> EpochSoFar:
        """These totals plus those of the batches since, `sums` = all ranks' (loss sum, correct,
        samples, skipped, decode fallbacks, decode failures); `draws` already counts from these."""
        loss_sum, correct, samples, skipped, fallbacks, failures = sums
        return EpochSoFar(batch, self.world_size, self.loss_sum + loss_sum, self.correct + correct,
                          self.samples + int(samples), self.skipped + int(skipped),
                          self.decode_fallbacks + int(fallbacks), self.decode_failures + int(failures),
                          self.seconds + seconds, dict(sorted(draws.items())))

    def record(self, lr: float) -> dict:
        """The epoch's training part of its log line (`lr`: that of its last step)."""
        n = max(self.samples, 1)
        return {"train_loss": self.loss_sum / n, "train_top1": 100 * self.correct / n, "lr": lr,
                "images_per_s": self.samples / self.seconds if self.seconds else 0.0,
                "epoch_time_s": self.seconds, "skipped_steps": self.skipped,
                "sparsity_draws": self.draws, "decode_fallbacks": self.decode_fallbacks,
                "decode_failures": self.decode_failures}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict | None, world_size: int) -> EpochSoFar:
        """From a checkpoint's `epoch_so_far` (None: it was written at the end of an epoch)."""
        return cls(**saved) if saved else cls(world_size=world_size)
