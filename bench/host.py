"""Host work per training step, for every method at each scale: aten ops, host reads, and on CUDA kernel launches,
sync calls and the kernels' share of the step.

A GPU runs a step only as fast as the host issues its kernels: every aten op costs the host microseconds, and every
read of a tensor to the host (`.item()`, `float(t)`, a data-dependent shape) waits until all queued kernels are
done. The same host work shows in the CPU profiler, so these counts are made on any machine:
  aten_ops     aten ops per step, nested ones counted (an op that calls another counts twice), torch.profiler
  host_reads   ops that read a tensor to the host or size an output by its data (SYNC_OPS), per step
  host_data    tensors built from Python or numpy data in the step (aten::lift_fresh): on CUDA a copy from host
               memory every step, which a CUDA graph cannot capture
  on CUDA, also (torch.profiler with CUDA activity, a synchronize after the steps):
  launches     kernel and graph launches per step (cudaLaunchKernel & co, cudaGraphLaunch)
  sync_calls   runtime calls that wait for the device (cuda*Synchronize) or copy synchronously (cudaMemcpy)
  kernel_share the kernels' busy time (their union on the timeline) / the steps' wall time
  step_ms      median wall time per step (a synchronize after each), images/s at it
Each method runs as the trainer runs it (bench.workload: through mist_core.graphs.StepRunner): on CUDA with and
without a CUDA graph (`mode` graph / eager), on the CPU eagerly. `warmup` steps first (enough to capture a graph).
"""
from __future__ import annotations

import statistics
import sys
import time
import traceback
from collections import Counter
from typing import Callable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from bench.rows import emit
from bench.settings import Settings
from bench.timing import sync, time_calls
from bench.workload import build, load_case, method_tasks
from mist_core.graphs import WARMUP_STEPS
from mist_core.registry import get_method

__all__ = ["SYNC_OPS", "HOST_DATA_OPS", "count_host", "measure", "run"]

# an op that reads a value to the host, or sizes its output by the data (which needs the data on the host first)
SYNC_OPS = frozenset({"aten::_local_scalar_dense", "aten::nonzero", "aten::nonzero_static", "aten::masked_select",
                      "aten::_unique2", "aten::unique_consecutive", "aten::unique_dim", "aten::repeat_interleave",
                      "aten::bincount", "aten::histc"})
HOST_DATA_OPS = frozenset({"aten::lift_fresh"})
LAUNCH_PREFIXES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchCooperativeKernel", "cudaGraphLaunch",
                   "cuGraphLaunch")
SYNC_CALLS = ("cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize", "cudaMemcpy")


def count_host(step: Callable[[], object], steps: int, cuda: bool) -> dict:
    """Profile `steps` calls of `step` (already warm): per-step aten ops, host reads (with the ops by name) and, on
    CUDA, launches, sync calls and kernel busy time."""
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    events = prof.events()
    host = [e for e in events if e.device_type == DeviceType.CPU]
    aten = Counter(e.name for e in host if e.name.startswith("aten::"))
    reads = {k: v / steps for k, v in aten.items() if k in SYNC_OPS}
    out = {"aten_ops": sum(aten.values()) / steps, "host_reads": sum(reads.values()), "host_read_ops": reads,
           "host_data": sum(v for k, v in aten.items() if k in HOST_DATA_OPS) / steps}
    if cuda:
        launches = sum(1 for e in host if e.name.startswith(LAUNCH_PREFIXES))
        syncs = sum(1 for e in host if e.name.startswith(SYNC_CALLS) and not e.name.startswith("cudaMemcpyAsync"))
        kernels = sorted((e.time_range.start, e.time_range.end) for e in events if e.device_type == DeviceType.CUDA)
        busy, end = 0.0, float("-inf")
        for a, b in kernels:                       # the union of kernel intervals (us): overlaps counted once
            if b > end:
                busy += b - max(a, end)
                end = b
        out.update(launches=launches / steps, sync_calls=syncs / steps, kernel_busy_ms=busy / 1e3 / steps)
    return out


def measure(method: str, task: str, scale: str, s: Settings, graphs: bool) -> dict:
    r, splits = load_case(method, task, scale, s.device, s.dataset)
    w = build(r, splits, graphs=graphs)
    cuda = w.method.device.type == "cuda"
    for _ in range(max(s.warmup, WARMUP_STEPS + 1 if graphs and cuda else 0)):
        w.step()
    sync(w.method.device)
    row = {"mode": "graph" if w.runner.captured else "eager", "eager_reason": w.runner.reason,
           **count_host(w.step, s.profile_steps, cuda)}
    wall, _ = time_calls(w.step, 0, s.repeats, w.method.device)
    row.update(step_ms=statistics.median(wall), images_per_s=w.batch_size / statistics.median(wall) * 1e3)
    if cuda:
        row["kernel_share"] = row["kernel_busy_ms"] / row["step_ms"]
    return row


def run(s: Settings) -> dict:
    """Every (method, task) that learns at each scale; on CUDA in both modes (graph and eager). Each row is also
    appended to $MIST_BENCH_ROWS as soon as it is measured (bench.rows); with a deadline, a case whose estimate (the
    slowest case so far at its scale and mode) would end after it is skipped with a row that says so."""
    rows = []
    cuda = s.device.startswith("cuda")
    cases = [(m, t) for m, t in method_tasks(s.methods) if get_method(m).learns]
    took: dict[tuple[str, bool], float] = {}             # (scale, graphs) -> the slowest case's seconds so far
    for scale in s.scales:
        for method, task in cases:
            for graphs in ((True, False) if cuda else (False,)):
                case = {"method": method, "task": task, "scale": scale, "mode": "graph" if graphs else "eager"}
                est = took.get((scale, graphs))
                if s.deadline is not None and est is not None and time.time() + est > s.deadline:
                    row = {**case, "skipped": f"needs about {est:.0f} s, {max(s.deadline - time.time(), 0):.0f} s "
                                              "left before the phase's deadline"}
                    print(f"[bench] host: {method}/{task} at {scale} ({case['mode']}) skipped: {row['skipped']}",
                          file=sys.stderr, flush=True)
                    rows.append(row)
                    emit("host", "skipped", row)
                    continue
                print(f"[bench] host: {method}/{task} at {scale}{' graphs' if graphs else ''}", file=sys.stderr,
                      flush=True)
                t0 = time.perf_counter()
                try:
                    row = {**case, **measure(method, task, scale, s, graphs), "device": s.device,
                           "profile_steps": s.profile_steps}
                except Exception as e:  # noqa: BLE001 - one method failing must not lose the others' numbers
                    traceback.print_exc(file=sys.stderr)
                    row = {**case, "error": f"{type(e).__name__}: {e}"}
                took[(scale, graphs)] = max(took.get((scale, graphs), 0.0), time.perf_counter() - t0)
                rows.append(row)
                emit("host", "error" if "error" in row else "row", row)
    return {"dataset": s.dataset, "device": s.device, "profile_steps": s.profile_steps, "rows": rows}
