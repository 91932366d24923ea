"""Peak memory of a piece of work, above what the process held before it.

CUDA: torch.cuda.max_memory_allocated since a reset, minus the allocation at the start (tensors only, exact).
CPU: resident set size (RSS), sampled every 2 ms by a background thread while the `with` block runs (psutil when it
is installed, else /proc/self/statm), and once more at each `sample()`; the baseline is taken after gc and glibc's
malloc_trim, so memory freed by earlier work (kept in the heap by mist_core._runtime's malloc tuning) is not
mistaken for this work's. Without either RSS source: the ru_maxrss growth (a lifetime high-water mark: 0 when an
earlier piece of work already went higher), reported as kind "ru_maxrss_delta".
"""
from __future__ import annotations

import ctypes
import gc
import os
import resource
import sys
import threading

import torch

__all__ = ["PeakMemory", "rss_bytes"]

try:
    import psutil
except ImportError:  # optional: not a dependency of the project
    psutil = None


def rss_bytes() -> int | None:
    """This process's resident set size in bytes, or None where neither psutil nor /proc is available."""
    if psutil is not None:
        return int(psutil.Process().memory_info().rss)
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _rss_source() -> str:
    return "rss_psutil" if psutil is not None else "rss_proc_statm"


def _release_free_heap() -> None:
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def _ru_maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # Linux reports KiB, macOS bytes


class PeakMemory:
    """with PeakMemory(device) as m: work() ... m.sample() ... m.result() -> {peak_mb, kind}."""

    def __init__(self, device: torch.device | str = "cpu", interval_s: float = 0.002):
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.cuda = self.device.type == "cuda"
        self.base = self.peak = 0
        self.kind = "cuda_max_allocated"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = self.peak = torch.cuda.memory_allocated(self.device)
            return self
        _release_free_heap()
        rss = rss_bytes()
        if rss is None:
            self.kind, self.base = "ru_maxrss_delta", _ru_maxrss_bytes()
            self.peak = self.base
            return self
        self.kind, self.base, self.peak = _rss_source(), rss, rss
        self._thread = threading.Thread(target=self._poll, name="bench-rss", daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def sample(self) -> None:
        """Fold the current usage into the peak (CUDA: the allocator's own peak counter)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.device))
        elif self.kind == "ru_maxrss_delta":
            self.peak = max(self.peak, _ru_maxrss_bytes())
        else:
            rss = rss_bytes()
            if rss is not None:
                self.peak = max(self.peak, rss)

    def result(self) -> dict:
        return {"peak_mem_mb": (self.peak - self.base) / 2**20, "mem_kind": self.kind}
