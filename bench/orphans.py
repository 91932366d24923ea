"""No orphans: a benchmark's child process dies with its parent (Linux: prctl PR_SET_PDEATHSIG).

A device call that ends by a signal or a time limit kills the process it started; the workers that process spawned
(concurrent trials, the paper check's parts) would otherwise go on using the GPU and the next call's time. Call
`die_with_parent()` first thing in a child (or pass it as subprocess's preexec_fn). Elsewhere it does nothing.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

__all__ = ["die_with_parent"]

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> None:
    """SIGKILL this process when its parent ends; if `parent` (its pid) already ended, end now."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:   # the parent ended before the prctl: nothing would tell us
        os._exit(1)
