"""SIGTERM (a scheduler's stop, `kill`, `timeout`) ends a command the way Ctrl-C does: as a
KeyboardInterrupt, so the same clean-up runs and the same message and exit status follow."""
import signal


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def treat_sigterm_as_ctrl_c() -> None:
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
