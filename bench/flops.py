"""Achieved FLOP/s of a MIST training step against the machine's measured convolution peak.

Step: torch.utils.flop_counter.FlopCounterMode counts the FLOPs of one `train_step` (after warm-up) of MIST (task
recon, the scale's preset batch); backward runs inside the mode, so it is counted too (convolution_backward, ...).
Only ops with a FLOP formula count (convolutions, matmuls); grid_sample, pooling and elementwise ops count 0, so
the achieved rate is of the matmul/conv work. Achieved GFLOP/s = counted FLOPs / the median wall time of
`repeats` steps timed without the counter.
Peak: conv2d forward (no grad, stride 1, 'same' padding) on each of `conv_shapes` (N, C_in, C_out, H = W, k);
FLOPs = 2 * N * C_out * H_out * W_out * C_in * k * k (a multiply-add = 2 FLOPs); GFLOP/s of the fastest of
min(repeats, 5) calls; the best shape is the measured peak. `ratio` = achieved / peak.

FlopCounterMode's module tracker (per-module counts) puts backward hooks on module inputs that
torch.autograd.grad (MIST's keypoint steps) refuses ("A leaf node was passed to _will_engine_execute_node"), so
it is swapped for a tracker that reports every FLOP under "Global" only: counts are per op, not per module.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench.settings import ConvShape, Settings
from bench.timing import summary, time_calls
from bench.workload import Workload, make_workload

__all__ = ["count_step_flops", "conv_flops", "conv_peak", "run"]


class _GlobalOnly:
    """Stands in for FlopCounterMode's ModuleTracker: no hooks, every FLOP is counted under 'Global'."""

    parents = {"Global"}

    def __enter__(self) -> "_GlobalOnly":
        return self

    def __exit__(self, *exc) -> None:
        return None


def count_step_flops(w: Workload) -> tuple[int, dict[str, int]]:
    """FLOPs of one train step (forward + backward), and per aten op."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        w.step()
    per_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), per_op


def conv_flops(shape: ConvShape) -> int:
    n, cin, cout, hw, k = shape
    return 2 * n * cout * hw * hw * cin * k * k      # 'same' padding: H_out = W_out = hw


def conv_peak(shapes: tuple[ConvShape, ...], s: Settings) -> list[dict]:
    dev = torch.device(s.device)
    rows = []
    for shape in shapes:
        n, cin, cout, hw, k = shape
        x = torch.randn(n, cin, hw, hw, device=dev)                  # (N, C_in, H, W)
        weight = torch.randn(cout, cin, k, k, device=dev) / (cin * k * k) ** 0.5
        bias = torch.zeros(cout, device=dev)

        def call() -> None:
            with torch.no_grad():
                F.conv2d(x, weight, bias, padding=k // 2)

        best_ms = summary(time_calls(call, max(s.warmup, 1), min(s.repeats, 5), dev)[0])["min_ms"]
        rows.append({"shape": list(shape), "flops": conv_flops(shape), "best_ms": best_ms,
                     "gflops_per_s": conv_flops(shape) / (best_ms / 1e3) / 1e9})
    return rows


def measure(scale: str, s: Settings) -> dict:
    w = make_workload("mist", "recon", scale, s.device, s.dataset)
    step = summary(time_calls(w.step, s.warmup, s.repeats, w.method.device)[0])
    flops, per_op = count_step_flops(w)
    return {"method": "mist", "task": "recon", "scale": scale, "batch_size": w.batch_size, "step_flops": flops,
            "flops_per_op": per_op, "step_ms": step["median_ms"],
            "achieved_gflops_per_s": flops / (step["median_ms"] / 1e3) / 1e9}


def run(s: Settings) -> dict:
    rows = []
    for scale in s.scales:
        print(f"[bench] flops: mist/recon at {scale}", file=sys.stderr, flush=True)
        rows.append(measure(scale, s))
    print("[bench] flops: conv2d peak", file=sys.stderr, flush=True)
    conv = conv_peak(s.conv_shapes, s)
    peak = max(r["gflops_per_s"] for r in conv)
    for r in rows:
        r["ratio_to_conv_peak"] = r["achieved_gflops_per_s"] / peak
    return {"conv": conv, "conv_peak_gflops_per_s": peak, "rows": rows}
