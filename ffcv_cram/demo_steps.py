"""The demo's commands, one at a time: each command's output streams live to the screen and into
demo.log as it comes; Ctrl-C stops the running command as its own Ctrl-C would (its last lines go
to the log only, so that the screen ends with the demo's one line)."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) while `step` ran; the command has ended."""

    def __init__(self, step: str):
        super().__init__(step)
        self.step = step


class StepFailed(Exception):
    """A command exited with an error; its output is on the screen and in the log."""

    def __init__(self, step: str, code: int):
        super().__init__(f"{step} exited with {code}")
        self.step, self.code = step, code


def shown(argv: list[str]) -> str:
    """The command as a user would type it."""
    return " ".join(shlex.quote(a) for a in argv).replace(sys.executable, "python")


def _echo(line: bytes, log) -> None:
    sys.stdout.buffer.write(line)
    sys.stdout.buffer.flush()
    log.write(line)
    log.flush()


def _stop(proc: subprocess.Popen, log) -> None:
    """After Ctrl-C: one SIGINT to the command (its own cleanup and last line), its remaining
    output into the log. A second Ctrl-C meanwhile is ignored, so no traceback interrupts this."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        rest, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # a command that ignores Ctrl-C
        proc.kill()
        rest, _ = proc.communicate()
    log.write(rest)
    log.flush()


def run_step(step: str, argv: list[str], cwd, log) -> None:
    """Print and log the command, run it with its output streamed to both; raises StepFailed on
    a non-zero exit and Interrupted on Ctrl-C (`step`: what the messages call it)."""
    text = shown(argv)
    print(f"\n$ {text}", flush=True)
    log.write(f"$ {text}\n".encode())
    log.flush()
    proc = None
    try:
        # its own session: a terminal's Ctrl-C reaches the demo alone, which passes one on.
        # PYTHONUNBUFFERED: a Python command's lines come as printed, not when it ends.
        proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        # bytes, not text: the log keeps the output exactly as written. Into a pipe, our progress
        # comes as plain lines (ffcv_cram.progress), so there are no bar frames to filter out.
        for line in iter(proc.stdout.readline, b""):
            _echo(line, log)
        code = proc.wait()
    except KeyboardInterrupt:
        if proc is not None:
            _stop(proc, log)
        raise Interrupted(step) from None
    if code != 0:
        raise StepFailed(step, code)
