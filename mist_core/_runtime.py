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


_torch_default: int | None = None   # torch's intra-op threads before this module first changed them


def usable_cores() -> int:
    """Cores this process may run on (its affinity)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _omp_num_threads() -> int | None:
    """OMP_NUM_THREADS as a positive count (its first level: OpenMP allows "4,2"), or None when unset or not one."""
    head = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(head) if head.isdigit() and int(head) >= 1 else None


def default_threads() -> int:
    """The intra-op threads of a run that names none: OMP_NUM_THREADS when set (several runs sharing a machine
    split it that way), else torch's own default (its physical cores) capped at the cores this process may use."""
    import torch

    global _torch_default
    if _torch_default is None:
        _torch_default = torch.get_num_threads()
    omp = _omp_num_threads()
    return omp if omp is not None else max(1, min(_torch_default, usable_cores()))


def set_threads(n: int | None) -> int:
    """Intra-op threads for torch: `n`, or default_threads() when None. Returns the number set."""
    import torch

    if n is None:
        n = default_threads()
    elif _torch_default is None:
        default_threads()  # remember torch's own default before it is changed
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def busy_cores(threads: int, load: float | None = None, usable: int | None = None,
               total: int | None = None) -> float | None:
    """The load already on the cores this process may use when it leaves fewer than `threads` of them free (a
    quarter of a core of slack: daemons, the tail of finished work), else None. The 1-minute load average counts
    the whole machine: an affinity that holds part of it gets its share. Where there is no load average, None."""
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            return None
    usable = usable_cores() if usable is None else usable
    total = max(os.cpu_count() or usable, usable) if total is None else max(total, usable)
    ours = load * usable / total           # the load on our cores, if the machine's is spread evenly
    return ours if usable - ours < threads - 0.75 else None


def busy_note(threads: int, fix: str) -> str | None:
    """One line for a run's start when its cores are already busy: what it will cost and `fix` (how to ask
    for fewer threads in that entry point); None when they are free."""
    ours = busy_cores(threads)
    if ours is None:
        return None
    usable = usable_cores()
    if threads > 1:
        return (f"the {usable} cores this process may use are busy (load {ours:.1f}) and this run asks for {threads} "
                f"threads, which would contend with that work and slow every step; {fix}")
    return (f"the {usable} cores this process may use are busy (load {ours:.1f}): this run's steps will share a core "
            f"and take longer than alone")
