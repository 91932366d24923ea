"""Wall-clock timing of repeated calls: warm-up, then one perf_counter interval per call (after a CUDA synchronize
on both sides, so the interval covers the device's work), summarised as median and inter-quartile range in ms."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

__all__ = ["sync", "time_calls", "summary"]


def sync(device: torch.device | str) -> None:
    """Wait for queued device work (CUDA); a no-op on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], warmup: int, repeats: int, device: torch.device | str = "cpu"
               ) -> tuple[list[float], list[float]]:
    """Call fn `warmup` times untimed, then `repeats` times timed. Returns (wall ms, process CPU ms) per call."""
    for _ in range(warmup):
        fn()
    sync(device)
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return wall, cpu


def summary(ms: list[float]) -> dict[str, float]:
    """median, q25, q75, iqr, min, mean (all ms) and n of a list of per-call times in ms."""
    if len(ms) >= 2:
        q25, _, q75 = statistics.quantiles(ms, n=4, method="inclusive")
    else:
        q25 = q75 = ms[0]
    return {"median_ms": statistics.median(ms), "q25_ms": q25, "q75_ms": q75, "iqr_ms": q75 - q25,
            "min_ms": min(ms), "mean_ms": statistics.fmean(ms), "n": len(ms)}
