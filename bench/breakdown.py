"""Where one MIST training step's time goes, by component: heatmap network, E_K, S, task network, S^-1, G,
optimisers, backward, other.

Three views, per scale (MIST, task recon, the scale's preset batch):
1. profiler (forward): `profile_steps` steps after warm-up under torch.profiler, each inside a "bench.step" range.
   Every profiled op's self time (CPU: self_cpu_time_total; CUDA: its kernels' self_device_time_total) goes to
   the nearest enclosing named range: the `mist.*` ranges of mist_core (mist_core._profiling.profile_range and
   the task head's record_function), "Optimizer.step#..."/"Optimizer.zero_grad#..." (torch.optim's own ranges)
   -> optimisers, "autograd::engine::evaluate_function: ..." -> backward, anything else (loss arithmetic, the
   keypoint update, Python between ops: the self time of "bench.step") -> other. These shares sum to 1.
   The profiler does not put backward time under the forward range that caused it.
2. profiler (fwd+bwd, attributed): each backward node is matched to its forward op by the autograd sequence
   number the profiler records on both (`sequence_nr`; among the forward ops carrying that number the last one
   to start is the op that created the node); its time joins that op's group. Unmatched backward -> other.
   These shares sum to 1 too.
3. isolated: each component's forward, and forward+backward, timed alone on the step's shapes (median of
   `repeats` calls): heatmap net on the batch; E_K and G (no gradient: forward only); S with a gradient w.r.t. the
   keypoints; the task network on B*K patches with gradients w.r.t. weights and input (as the keypoint steps
   need); S^-1 with gradients w.r.t. patches and keypoints; both optimiser steps.
`calls_per_step` counts each range per step (e.g. the task network runs 1 + kp_steps + 1 times).
The MIST-specific ops are E_K, S, S^-1 and G: their share of the step is reported for views 1 and 2.
"""
from __future__ import annotations

import sys
from collections import defaultdict
from typing import Callable, Iterable

import torch
from torch.autograd import DeviceType
from torch.autograd.profiler_util import FunctionEvent
from torch.profiler import ProfilerActivity, profile, record_function

from bench.settings import Settings
from bench.timing import summary, time_calls
from bench.workload import Workload, make_workload
from mist_core.keypoints import extract_topk, render_heatmap
from mist_core.sampler import paste_patches, sample_patches

__all__ = ["GROUPS", "LABELS", "MIST_OPS", "group_of", "profile_groups", "isolated", "run"]

RANGES = {"mist.heatmap": "heatmap", "mist.E_K": "E_K", "mist.S": "S", "mist.task_net": "task_net",
          "mist.S_inv": "S_inv", "mist.G": "G"}
GROUPS = ("heatmap", "E_K", "S", "task_net", "S_inv", "G", "optimisers", "backward", "other")
LABELS = {"heatmap": "heatmap network", "E_K": "E_K (top-K, NMS)", "S": "S (sample_patches)",
          "task_net": "task network", "S_inv": "S^-1 (paste_patches)", "G": "G (render_heatmap)",
          "optimisers": "optimisers", "backward": "backward (unattributed)", "other": "other"}
MIST_OPS = ("E_K", "S", "S_inv", "G")
STEP_RANGE = "bench.step"
BACKWARD_PREFIX = "autograd::engine::evaluate_function"


def _own_group(name: str) -> str | None:
    if name in RANGES:
        return RANGES[name]
    if name.startswith("Optimizer."):
        return "optimisers"
    if name.startswith(BACKWARD_PREFIX):
        return "backward"
    return None


def group_of(e: FunctionEvent) -> str:
    """The group of the nearest named range enclosing event e (e itself included); 'other' if none."""
    while e is not None:
        g = _own_group(e.name)
        if g is not None:
            return g
        e = e.cpu_parent
    return "other"


def _host_events(events: Iterable[FunctionEvent]) -> list[FunctionEvent]:
    return [e for e in events if e.device_type == DeviceType.CPU]


def profile_groups(w: Workload, steps: int) -> dict:
    """Profile `steps` train steps; per-step ms of each group (forward view and attributed view), range calls."""
    cuda = w.method.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            with record_function(STEP_RANGE):
                w.step()
        if cuda:
            torch.cuda.synchronize(w.method.device)
    events = _host_events(prof.events())
    own: Callable[[FunctionEvent], float] = ((lambda e: e.self_device_time_total) if cuda
                                             else (lambda e: e.self_cpu_time_total))  # microseconds
    fwd_us: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    groups = {e.id: group_of(e) for e in events}
    creator: dict[tuple[int, int], tuple[float, str]] = {}   # (thread, sequence_nr) -> (start, group) of the creator
    for e in events:
        g = groups[e.id]
        fwd_us[g] += own(e)
        if e.name in RANGES:
            calls[RANGES[e.name]] += 1
        if g != "backward" and e.sequence_nr >= 0:
            key = (e.thread, e.sequence_nr)
            if key not in creator or e.time_range.start >= creator[key][0]:
                creator[key] = (e.time_range.start, g)
    attributed_us: dict[str, float] = defaultdict(float)
    for e in events:
        g = groups[e.id]
        if g == "backward":
            # the time of the whole backward node goes where its innermost evaluate_function event points
            top = e
            while top.cpu_parent is not None and not top.name.startswith(BACKWARD_PREFIX):
                top = top.cpu_parent
            match = creator.get((top.fwd_thread, top.sequence_nr))
            g = match[1] if match is not None else "other"
        attributed_us[g] += own(e)
    total_us = sum(fwd_us.values())
    step_ranges = [e for e in events if e.name == STEP_RANGE]
    return {
        "profiled_steps": steps,
        "time_kind": "cuda_kernel_self_time" if cuda else "cpu_self_time",
        "profiled_step_ms": sum(e.cpu_time_total for e in step_ranges) / 1e3 / steps,
        "total_ms": total_us / 1e3 / steps,
        "fwd_ms": {g: fwd_us.get(g, 0.0) / 1e3 / steps for g in GROUPS},
        "attributed_ms": {g: attributed_us.get(g, 0.0) / 1e3 / steps for g in GROUPS},
        "calls_per_step": {g: calls.get(g, 0) / steps for g in RANGES.values()},
    }


def _shares(ms: dict[str, float]) -> dict[str, float]:
    total = sum(ms.values())
    return {g: v / total for g, v in ms.items()}


def isolated(w: Workload, s: Settings) -> dict[str, dict[str, float | None]]:
    """Median forward and forward+backward ms of each component alone, on the shapes of one step."""
    m, c, dev = w.method, w.method.cfg, w.method.device
    images = w.batch.images                                           # (B, C, H, W)
    B, C, H, W = images.shape
    with torch.no_grad():
        h_scales, h = m.heat(images)                                   # (B, S, H, W), (B, H, W)
        kp, _ = extract_topk(h_scales, h, m.sizes, c.k, c.nms_window)  # (B, K, 3) pixels
        patches = sample_patches(images, kp, c.patch_res)              # (B, K, C, p, p)
        flat = patches.reshape(B * c.k, C, c.patch_res, c.patch_res)   # (B*K, C, p, p)
        out = m.head.net(flat)
        dec = out.view(B, c.k, C, c.patch_res, c.patch_res) if out.dim() == 4 else patches  # recon: decoded
    valid = m.valid_mask(w.batch)                                      # (B, K)

    def heat_fb():
        m.opt_heat.zero_grad()      # the optimiser's own: its gradients are views of one flat buffer
        m.heat(images)[0].sum().backward()

    def s_fb():
        x = kp.clone().requires_grad_(True)
        sample_patches(images, x, c.patch_res).sum().backward()

    def task_fb():
        m.opt_task.zero_grad()
        m.head.net(flat.clone().requires_grad_(True)).sum().backward()

    def s_inv_fb():
        d, x = dec.clone().requires_grad_(True), kp.clone().requires_grad_(True)
        paste_patches(d, x, H, W, max_size=m.head.max_size).sum().backward()

    def no_grad(fn: Callable[[], object]) -> Callable[[], None]:
        def call() -> None:
            with torch.no_grad():
                fn()
        return call

    def optimisers():
        for o in m.optimizers().values():
            o.step()

    heat_fb(), task_fb()                                               # gradients for the optimiser steps
    cases: dict[str, tuple[Callable[[], object] | None, Callable[[], object] | None]] = {
        "heatmap": (no_grad(lambda: m.heat(images)), heat_fb),
        "E_K": (no_grad(lambda: extract_topk(h_scales, h, m.sizes, c.k, c.nms_window)), None),
        "S": (no_grad(lambda: sample_patches(images, kp, c.patch_res)), s_fb),
        "task_net": (no_grad(lambda: m.head.net(flat)), task_fb),
        "S_inv": (no_grad(lambda: paste_patches(dec, kp, H, W, max_size=m.head.max_size)), s_inv_fb),
        "G": (no_grad(lambda: render_heatmap(kp, m.sizes, H, W, valid)), None),
        "optimisers": (None, optimisers),
    }
    out_ms: dict[str, dict[str, float | None]] = {}
    for name, (fwd, fwd_bwd) in cases.items():
        out_ms[name] = {
            "fwd_ms": summary(time_calls(fwd, s.warmup, s.repeats, dev)[0])["median_ms"] if fwd else None,
            "fwd_bwd_ms": summary(time_calls(fwd_bwd, s.warmup, s.repeats, dev)[0])["median_ms"] if fwd_bwd else None,
        }
    return out_ms


def measure(scale: str, s: Settings) -> dict:
    w = make_workload("mist", "recon", scale, s.device, s.dataset)
    step_ms = summary(time_calls(w.step, s.warmup, s.repeats, w.method.device)[0])
    prof = profile_groups(w, s.profile_steps)
    fwd_share, attr_share = _shares(prof["fwd_ms"]), _shares(prof["attributed_ms"])
    return {"method": "mist", "task": "recon", "scale": scale, "batch_size": w.batch_size,
            "step_ms": step_ms["median_ms"], "step_iqr_ms": step_ms["iqr_ms"], **prof,
            "fwd_share": fwd_share, "attributed_share": attr_share,
            "mist_ops_share_fwd": sum(fwd_share[g] for g in MIST_OPS),
            "mist_ops_share_attributed": sum(attr_share[g] for g in MIST_OPS),
            "isolated": isolated(w, s)}


def run(s: Settings) -> dict:
    rows = []
    for scale in s.scales:
        print(f"[bench] breakdown: mist/recon at {scale}", file=sys.stderr, flush=True)
        rows.append(measure(scale, s))
    return {"groups": list(GROUPS), "labels": LABELS, "mist_ops": list(MIST_OPS), "rows": rows}
