"""Progress output: live bars on a terminal (a real pseudo-terminal), plain lines in a log."""
import fcntl
import io
import os
import pty
import re
import struct
import termios
import subprocess
import sys
from pathlib import Path

from ffcv_cram.progress import bar, track

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ("from ffcv_cram.progress import track\n"
          "for _ in track(range(50), 'phase', min_interval=0): pass\n")


def test_a_log_gets_a_line_per_tenth_and_no_carriage_returns():
    log = io.StringIO()
    progress = bar(50, "eval", stream=log, min_interval=0, unit="batches")
    for i in range(50):
        progress.update(1)
        if i == 20:
            progress.set_postfix(loss="0.123")
    progress.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert [line.split(",")[0] for line in lines] == [
        f"eval: {p}% ({p // 2}/50 batches)" for p in range(10, 100, 10)] + ["eval: 100% (50/50 batches)"]
    assert lines[-1].endswith(", loss 0.123") and "loss" not in lines[0]


def test_a_short_phase_prints_nothing_and_a_silent_bar_never_prints():
    log = io.StringIO()
    list(track(range(30), "quick", stream=log))  # well under the default interval
    list(track(range(30), "rank 1", stream=log, enabled=False, min_interval=0))
    assert log.getvalue() == ""


def run_script(stderr_is_terminal: bool) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not stderr_is_terminal:
        proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                              env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stderr=child, env=env)
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    assert proc.wait(timeout=120) == 0
    return out.decode()


def test_a_terminal_keeps_the_live_bar():
    # tqdm redraws in place: a carriage return not ending a line (the terminal turns \n into \r\n)
    assert re.search("\r(?!\n)", run_script(stderr_is_terminal=True))


def test_a_pipe_gets_plain_lines():
    out = run_script(stderr_is_terminal=False)
    assert "\r" not in out and out.splitlines()[0].startswith("phase: 10% (5/50 it)")
