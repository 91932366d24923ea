"""Training-step throughput of every registered method, for each task it supports, at each scale.

Per (method, task, scale): the method is built as the Trainer builds it (bench.workload) on a batch of the scale's
preset batch size from the benchmark dataset (mnist_hard), `warmup` untimed steps, then `repeats` timed calls of
`method.train_step(batch)` (the same batch each time). Reported: ms/step median and IQR, images/s at the median,
process CPU time per step / wall time per step (cores kept busy), peak memory over build + warm-up + timed steps
(bench.memory: RSS growth on the CPU, max_memory_allocated on CUDA; the data are made before it starts, and one
untimed build + step of the first case runs before all others so that one-off allocations are not counted)
and the parameter count. A method that fails (e.g. one that cannot run at a scale) gets a row with its error
instead; the others still run.
"""
from __future__ import annotations

import statistics
import sys
import traceback

from bench.memory import PeakMemory
from bench.settings import Settings
from bench.timing import summary, time_calls
from bench.workload import build, load_case, make_workload, method_tasks
from mist_core.data import Splits
from mist_core.train import Resolved

__all__ = ["run", "measure", "measure_case"]


def measure(method: str, task: str, scale: str, s: Settings) -> dict:
    r, splits = load_case(method, task, scale, s.device, s.dataset)
    return {"method": method, "task": task, "scale": scale, **measure_case(r, splits, s)}


def measure_case(r: Resolved, splits: Splits, s: Settings) -> dict:
    """Build, `warmup` untimed steps, `repeats` timed ones: the row's numbers (all but what the case is)."""
    with PeakMemory(s.device) as mem:                  # the method's footprint: networks, optimisers, activations
        w = build(r, splits)
        for _ in range(s.warmup):
            w.step()
    wall, cpu = time_calls(w.step, 0, s.repeats, w.method.device)
    mem.sample()
    stats = summary(wall)
    return {"batch_size": w.batch_size, "warmup": s.warmup, **stats,
            "images_per_s": w.batch_size / (stats["median_ms"] / 1e3),
            "cpu_per_wall": statistics.fmean(cpu) / statistics.fmean(wall), **mem.result(),
            "n_parameters": w.method.n_parameters()}


def _prime(cases: list[tuple[str, str]], scale: str, s: Settings) -> None:
    """One untimed build + step first: the process's one-off allocations (thread pools, kernel libraries' buffers;
    ~100 MB measured) would otherwise count in the first measured method's peak memory."""
    if cases:
        w = make_workload(*cases[0], scale, s.device, s.dataset)
        w.step()


def run(s: Settings) -> dict:
    rows = []
    cases = method_tasks(s.methods)
    if s.scales:
        _prime(cases, s.scales[0], s)
    for scale in s.scales:
        for method, task in cases:
            print(f"[bench] steps: {method}/{task} at {scale}", file=sys.stderr, flush=True)
            try:
                rows.append(measure(method, task, scale, s))
            except Exception as e:  # noqa: BLE001 - one method failing must not lose the others' numbers
                traceback.print_exc(file=sys.stderr)
                rows.append({"method": method, "task": task, "scale": scale, "error": f"{type(e).__name__}: {e}"})
    return {"dataset": s.dataset, "device": s.device, "repeats": s.repeats, "rows": rows}
