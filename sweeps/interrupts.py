"""Stopping a sweep: Ctrl-C (which Tune catches itself during a fit) and SIGTERM (e.g. `ray job stop`).

Either way the driver ends as interrupted: the sweep's MLflow runs are closed as KILLED and it says how to resume.
While they are being closed, further signals are noted and not acted on (`deferred`), so a second Ctrl-C cannot
leave runs RUNNING.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator

__all__ = ["Interrupted", "sigterm_raises", "deferred", "tune_caught_sigint"]


class Interrupted(Exception):
    """A Tune experiment was stopped before all its trials ended (Ctrl-C caught by Tune, or trials left unfinished)."""


def _sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While inside: SIGTERM raises KeyboardInterrupt("SIGTERM") in the main thread, so the driver closes its runs on
    the way out. Enter it after ray.init(), which installs its own handler (sys.exit: the runs would read FAILED).
    The previous handler is put back on the way out."""
    if not _main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@contextlib.contextmanager
def deferred() -> Iterator[list[int]]:
    """While inside: SIGINT and SIGTERM are only noted (the yielded list of signal numbers), so closing the sweep's
    MLflow runs is not cut short; the previous handlers are put back on the way out."""
    got: list[int] = []
    if not _main_thread():
        yield got
        return
    before = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield got
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def tune_caught_sigint(before) -> bool:
    """Whether Tune's own SIGINT handler fired during fit (it then re-installs the previous handler; otherwise its
    handler stays installed after fit, and we put the previous one back)."""
    now = signal.getsignal(signal.SIGINT)
    if getattr(now, "__name__", "") == "signal_interrupt_tune_run":
        signal.signal(signal.SIGINT, before)
        return False
    tune_installs = _main_thread() and not int(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0"))
    return tune_installs and now is before
