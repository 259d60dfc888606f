"""Which steps of a CrAM run are full (two-pass) steps: a pure function of the step count.

    interval=k          full steps at 0, k, 2k, ... (counted from start_step)
    start_step=S        steps before S are one-pass steps (plain base-optimizer steps): CrAM
                        only over the last part of training
    ramp_steps=T        the rate of full steps rises linearly from 1/k at start_step to 1 at
                        start_step + T (every step from there on is full)

The ramp is exact integer arithmetic, so every process and every resumed run agrees: of the first
t steps of the ramp, N(t) = floor((2Tt + (k - 1)t^2 + 2kT - 1) / (2kT)) are full (step 0 is), and
step t is full when N(t + 1) > N(t). With k = 1 every step is full, ramp or not.
"""
from __future__ import annotations


def _ramp_full_steps(t: int, interval: int, ramp_steps: int) -> int:
    """N(t): how many of the first t steps of the ramp are full steps."""
    k, span = interval, ramp_steps
    return (2 * span * t + (k - 1) * t * t + 2 * k * span - 1) // (2 * k * span)


def is_full_step(step: int, interval: int = 1, start_step: int = 0, ramp_steps: int = 0) -> bool:
    """Whether step `step` (0-based, the optimizer's count of steps taken) is a full CrAM step."""
    t = step - start_step
    if t < 0:
        return False
    if not ramp_steps:
        return t % interval == 0
    if t >= ramp_steps:
        return True
    return _ramp_full_steps(t + 1, interval, ramp_steps) > _ramp_full_steps(t, interval, ramp_steps)


def check_schedule(interval: int, start_step: int, ramp_steps: int) -> None:
    for name, value, least in (("interval", interval, 1), ("start_step", start_step, 0),
                               ("ramp_steps", ramp_steps, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name}={value!r}: must be an integer >= {least}")
    if ramp_steps and interval < 2:
        raise ValueError("ramp_steps needs interval >= 2 (the ramp starts at one full step in "
                         "`interval`; with interval 1 every step is full already)")
