"""Stopping a sweep: Ctrl-C (which Tune catches itself during a fit) and SIGTERM (e.g. `ray job stop`).

Either way the driver ends as interrupted: the sweep's MLflow runs are closed as KILLED and it says how to resume.
"""
from __future__ import annotations

import os
import signal
import threading

__all__ = ["Interrupted", "raise_on_sigterm", "tune_caught_sigint"]


class Interrupted(Exception):
    """A Tune experiment was stopped before all its trials ended (Ctrl-C caught by Tune, or trials left unfinished)."""


def _sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def raise_on_sigterm() -> None:
    """SIGTERM raises KeyboardInterrupt("SIGTERM") in the main thread, so the driver closes its runs on the way out."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm)


def tune_caught_sigint(before) -> bool:
    """Whether Tune's own SIGINT handler fired during fit (it then re-installs the previous handler; otherwise its
    handler stays installed after fit, and we put the previous one back)."""
    now = signal.getsignal(signal.SIGINT)
    if getattr(now, "__name__", "") == "signal_interrupt_tune_run":
        signal.signal(signal.SIGINT, before)
        return False
    tune_installs = threading.current_thread() is threading.main_thread() and not int(
        os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0"))
    return tune_installs and now is before
