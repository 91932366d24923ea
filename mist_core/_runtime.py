"""Process-wide runtime settings every entry point gets by importing mist_core.

glibc's default malloc returns freed blocks to the OS (trim) and maps big blocks (mmap) afresh each time;
a training step that allocates and frees the same large tensors every iteration then pays page faults on
every step. Raising the thresholds keeps that memory in the heap. Set MIST_NO_MALLOC_TUNING=1 to skip.
"""
from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False


def tune_allocator(mmap_threshold: int = 32 * 1024 * 1024, trim_threshold: int = 1024 * 1024 * 1024) -> bool:
    """Raise glibc malloc's mmap/trim thresholds once per process. Returns True if applied."""
    global _done
    if _done or os.environ.get("MIST_NO_MALLOC_TUNING") or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, ...)
        return False
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    _done = ok
    return ok


def configure_torch(threads: int | None = None) -> int:
    """Per-process torch settings for training: flush denormals to zero, cuDNN's autotuning, the intra-op threads.

    The local spatial softmax and the sigmoid tails produce subnormal floats; on x86 CPUs arithmetic on them
    is microcoded, and a quick-scale MIST step measured 6.6 s with them against 0.44 s flushed (same losses).
    """
    import torch

    torch.set_flush_denormal(True)
    # a training step's shapes are fixed: cuDNN times its convolution algorithms once per shape and keeps the fastest
    # (a CUDA graph's eager warm-up steps do the timing before capture)
    torch.backends.cudnn.benchmark = True
    return set_threads(threads)


def set_threads(n: int | None) -> int:
    """Intra-op threads for torch (default: all cores this process may use). Returns the number set."""
    import torch

    if n is None:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
