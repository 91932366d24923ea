"""Several trials on one device: aggregate training throughput of 1, 2, 4, 8 concurrent MIST recon trials.

A trial alone leaves a GPU idle between its kernels (host-bound steps, evaluation, logging); several trials in their
own processes fill those gaps, until the GPU's compute or memory is the limit. For each N, N worker processes
(spawned: each its own CUDA context, as Ray's trial workers) build MIST as the trainer does (bench.workload, CUDA
graph where available), warm up (graph capture included), wait for one another, then train for `seconds`; each counts
its steps. Reported per N: aggregate images/s (all workers' images / the common window), per-trial images/s, the
speed-up over N = 1, and each worker's peak device memory. The sweep configs' fractional `resources.gpu` is read off
this curve (the N past which the aggregate stops growing; memory bounds it too).

    python -m bench --only concurrency --device cuda --scales paper --out ...

On the CPU the same code runs (each worker one thread), which is what the test suite checks.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import sys
import time
import traceback

import torch

from bench.rows import emit
from bench.settings import Settings
from bench.timing import sync

__all__ = ["run", "LEVELS"]

LEVELS = (1, 2, 4, 8)
TINY_LEVELS = (1, 2)


def _worker(method: str, task: str, scale: str, device: str, threads: int, seconds: float, warmup: int,
            ready, go, out, n: int, index: int, parent: int) -> None:  # noqa: ANN001 - multiprocessing primitives
    from bench.orphans import die_with_parent
    from bench.rows import emit

    die_with_parent(parent)
    case = {"method": method, "task": task, "scale": scale, "n": n, "worker": index}
    try:
        from bench.workload import make_workload
        from mist_core._runtime import configure_torch
        from mist_core.graphs import WARMUP_STEPS

        configure_torch(threads)
        w = make_workload(method, task, scale, device)
        for _ in range(max(warmup, WARMUP_STEPS + 1)):
            w.step()
        sync(w.method.device)
        if w.method.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(w.method.device)
        ready.put(None)
        go.wait()
        t0 = time.perf_counter()
        steps = 0
        while time.perf_counter() - t0 < seconds:
            w.step()
            steps += 1
            if steps % 10 == 0:      # the host runs ahead of the device: bound the queue, time what the device did
                sync(w.method.device)
        sync(w.method.device)
        wall = time.perf_counter() - t0
        mem = torch.cuda.max_memory_allocated(w.method.device) / 2**20 if w.method.device.type == "cuda" else None
        row = {"steps": steps, "seconds": wall, "images": steps * w.batch_size, "graph": w.runner.captured,
               "peak_gpu_mem_mb": mem}
        emit("concurrency", "worker", {**case, **row})   # kept now, whatever happens to the other workers
        out.put(row)
    except Exception as e:  # noqa: BLE001 - reported, not raised in a child
        traceback.print_exc(file=sys.stderr)
        ready.put(None)
        emit("concurrency", "error", {**case, "error": f"{type(e).__name__}: {e}"})
        out.put({"error": f"{type(e).__name__}: {e}"})


def measure(n: int, method: str, task: str, scale: str, s: Settings, seconds: float) -> dict:
    """N concurrent workers; their common measuring window starts when all are warm."""
    ctx = mp.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_worker, args=(method, task, scale, s.device, s.threads or 1, seconds, s.warmup,
                                               ready, go, out, n, i, os.getpid()), daemon=True) for i in range(n)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=1800)
    go.set()
    results = [out.get(timeout=seconds * 4 + 600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        return {"n": n, "error": errors[0]}
    window = max(r["seconds"] for r in results)
    per = [r["images"] / r["seconds"] for r in results]
    return {"n": n, "images_per_s": sum(r["images"] for r in results) / window,
            "per_trial_images_per_s": statistics.fmean(per), "steps": [r["steps"] for r in results],
            "graph": all(r["graph"] for r in results),
            "peak_gpu_mem_mb": max((r["peak_gpu_mem_mb"] or 0) for r in results) or None}


def run(s: Settings) -> dict:
    """MIST recon (Table 1's task, the most trials of a paper sweep) at each scale, N = 1, 2, 4, 8 (tiny: 1, 2).
    Each worker's count is appended to $MIST_BENCH_ROWS as it finishes, each level's row when all have; with a
    deadline, a level whose estimate (the previous level's time, times N / its N) would end after it is skipped, with
    a row that says so."""
    levels = TINY_LEVELS if s.tiny else LEVELS
    seconds = s.concurrency_seconds
    method, task = "mist", "recon"
    rows = []
    for scale in s.scales:
        base = None
        last: tuple[int, float] | None = None           # (N, seconds) of the previous level
        for n in levels:
            case = {"method": method, "task": task, "scale": scale, "n": n}
            est = last[1] * max(n / last[0], 1.0) if last else None
            if s.deadline is not None and est is not None and time.time() + est > s.deadline:
                row = {**case, "skipped": f"needs about {est:.0f} s, {max(s.deadline - time.time(), 0):.0f} s left "
                                          "before the phase's deadline"}
                print(f"[bench] concurrency: {n} x {method}/{task} at {scale} skipped: {row['skipped']}",
                      file=sys.stderr, flush=True)
                rows.append(row)
                emit("concurrency", "skipped", row)
                continue
            print(f"[bench] concurrency: {n} x {method}/{task} at {scale}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            row = {**case, **measure(n, method, task, scale, s, seconds)}
            last = (n, time.perf_counter() - t0)
            if "error" not in row:
                base = base or row["images_per_s"]
                row["speedup"] = row["images_per_s"] / base
            rows.append(row)
            emit("concurrency", "error" if "error" in row else "row", {**row, "device": s.device, "seconds": seconds})
    return {"device": s.device, "seconds": seconds, "levels": list(levels), "rows": rows}
