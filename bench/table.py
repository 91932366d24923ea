"""A benchmark JSON (python -m bench) as Markdown tables, for the README:

    python -m bench.table bench/results/<name>.json

`render(results) -> str`: one section per item present (steps, host, authors, breakdown, flops, sweep, data), each a
GitHub-flavoured table (tabulate), under a line saying what machine the numbers come from.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tabulate import tabulate

__all__ = ["render", "main"]


def _n(x: float | None, digits: int = 3) -> str:
    """3 significant digits, thousands without exponent; '-' for missing."""
    if x is None:
        return "-"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _table(rows: list[list], headers: list[str]) -> str:
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def machine_line(m: dict) -> str:
    dev = m.get("device_name") or "CPU"
    load = m.get("load_avg_1_5_15")
    parts = [f"{m.get('cpu_model')} ({m.get('usable_cores')} usable cores, torch threads {m.get('torch_threads')})",
             f"device {m.get('device')}" + (f" ({dev})" if m.get("device_name") else ""),
             f"torch {m.get('torch')}", f"{m.get('platform')}", f"{m.get('date')}",
             f"commit {str(m.get('git_commit'))[:10]}{' (dirty)' if m.get('git_dirty') else ''}"]
    if load:
        parts.append(f"load average at start {load[0]:.2f}")
    return "Machine: " + "; ".join(parts) + "."


def steps_md(r: dict) -> str:
    rows = []
    for x in r["rows"]:
        if "error" in x:
            rows.append([x["method"], x["task"], x["scale"], "-", f"error: {x['error']}", "", "", "", ""])
            continue
        rows.append([x["method"], x["task"], x["scale"], x["batch_size"], _n(x["median_ms"]), _n(x["iqr_ms"]),
                     _n(x["images_per_s"]), _n(x["peak_mem_mb"]), _n(x["cpu_per_wall"], 2)])
    return (f"### Training steps ({r['dataset']}, {r['device']}, {r['repeats']} timed steps)\n\n"
            + _table(rows, ["method", "task", "scale", "batch", "ms/step (median)", "IQR (ms)", "images/s",
                            "peak memory (MB)", "CPU s / wall s"]))


def authors_md(r: dict) -> str:
    x = r["rows"][0]
    c = r["method_config"]
    where = (f"classify, batch {x['batch_size']}, K {c['k']}, sizes {c['sizes']}, heatmap {c['heat_blocks']} blocks of "
             f"{c['heat_width']}, patches {c['patch_res']}, classifier {c['task_levels']} levels of {c['task_blocks']} "
             f"blocks from {c['task_width']}, {c['kp_steps']} keypoint steps")
    return (f"### MIST step at the authors' configuration ({where}; {r['repeats']} timed steps)\n\n"
            + _table([[_n(x["median_ms"]), _n(x["iqr_ms"]), _n(x["images_per_s"]), _n(x["peak_mem_mb"]),
                       _n(x["cpu_per_wall"], 2), _n(x["step_flops"] / 1e9 if "step_flops" in x else None), _n(x.get("achieved_gflops_per_s")),
                       _n(x.get("conv_peak_gflops_per_s")), _pct(x.get("ratio_to_conv_peak")),
                       _n(x.get("images_per_s_at_conv_peak"))]],
                     ["ms/step (median)", "IQR (ms)", "images/s", "peak memory (MB)", "CPU s / wall s", "GFLOP/step",
                      "achieved GFLOP/s", "conv peak GFLOP/s", "of peak", "images/s at conv peak"]))


def breakdown_md(r: dict) -> str:
    out = []
    for x in r["rows"]:
        iso = x["isolated"]
        rows = []
        for g in r["groups"]:
            i = iso.get(g, {})
            rows.append([r["labels"][g], _n(x["calls_per_step"].get(g)), _n(x["fwd_ms"][g]), _pct(x["fwd_share"][g]),
                         _n(x["attributed_ms"][g]), _pct(x["attributed_share"][g]), _n(i.get("fwd_ms")),
                         _n(i.get("fwd_bwd_ms"))])
        out.append(
            f"### One MIST step, by component ({x['task']}, {x['scale']}, batch {x['batch_size']}): "
            f"{_n(x['step_ms'])} ms/step, {_n(x['profiled_step_ms'])} ms under the profiler\n\n"
            + _table(rows, ["component", "calls/step", "profiler fwd (ms)", "share", "profiler fwd+bwd (ms)",
                            "share", "alone fwd (ms)", "alone fwd+bwd (ms)"])
            + f"\n\nMIST-specific ops ({', '.join(r['mist_ops'])}): {_pct(x['mist_ops_share_fwd'])} of the step "
              f"(backward unattributed), {_pct(x['mist_ops_share_attributed'])} with their backward.")
    return "\n\n".join(out)


def _shape(n: int, cin: int, cout: int, hw: int, k: int) -> str:
    return f"{n}, {cin}->{cout}, {hw}x{hw}, {k}x{k}"


def flops_md(r: dict) -> str:
    rows = [[x["scale"], x["batch_size"], _n(x["step_flops"] / 1e9), _n(x["step_ms"]), _n(x["achieved_gflops_per_s"]),
             _n(r["conv_peak_gflops_per_s"]), _pct(x["ratio_to_conv_peak"])] for x in r["rows"]]
    conv = [[_shape(*c["shape"]), _n(c["flops"] / 1e9), _n(c["best_ms"]), _n(c["gflops_per_s"])]
            for c in r["conv"]]
    return ("### Achieved FLOP/s of a MIST step (recon)\n\n"
            + _table(rows, ["scale", "batch", "GFLOP/step", "ms/step", "achieved GFLOP/s", "conv peak GFLOP/s",
                            "of peak"])
            + "\n\nConv2d peak microbenchmark (forward, no grad):\n\n"
            + _table(conv, ["N, C_in->C_out, H x W, k x k", "GFLOP", "best ms", "GFLOP/s"]))


def sweep_md(r: dict) -> str:
    row = [r["method"], r["scale"], r["trials"], r["cores"], _n(r["seconds_per_trial"]), _n(r["wall_s"]),
           _n(r["train_seconds_sum"]), _n(r["core_seconds_sum"]), _pct(r["utilisation"]),
           _n(r["per_trial_overhead_s"]), _n(r["outside_trials_s"])]
    return ("### Sweep utilisation (local Ray)\n\n"
            + _table([row], ["method", "scale", "trials", "cores", "training s/trial", "wall s", "training s",
                             "training core-s", "utilisation", "overhead s/trial", "outside trials s"]))


def data_md(r: dict) -> str:
    rows = [[x["dataset"], "-", f"skipped: {x['skipped']}"] if "skipped" in x else
            [x["dataset"], x["images"], _n(x["images_per_s"])] for x in r["rows"]]
    return "### Data generation\n\n" + _table(rows, ["dataset", "images", "images/s"])


def host_md(r: dict) -> str:
    rows = []
    for x in r["rows"]:
        if "error" in x or "skipped" in x:
            why = f"error: {x['error']}" if "error" in x else f"skipped: {x['skipped']}"
            rows.append([x["method"], x["task"], x["scale"], x.get("mode", "-"), why] + [""] * 6)
            continue
        rows.append([x["method"], x["task"], x["scale"], x["mode"], _n(x["aten_ops"]), _n(x["host_reads"]),
                     _n(x.get("launches")), _n(x.get("sync_calls")), _pct(x.get("kernel_share")), _n(x["step_ms"]),
                     _n(x["images_per_s"])])
    return (f"### Host work per training step ({r['dataset']}, {r['device']}, {r['profile_steps']} profiled steps)\n\n"
            + _table(rows, ["method", "task", "scale", "mode", "aten ops", "host reads", "launches", "sync calls",
                            "kernel share", "ms/step", "images/s"]))


def concurrency_md(r: dict) -> str:
    rows = [[x["method"], x["task"], x["scale"], x["n"], f"error: {x['error']}" if "error" in x else
             f"skipped: {x['skipped']}", "", "", "", ""] if "error" in x or "skipped" in x else
            [x["method"], x["task"], x["scale"], x["n"], _n(x["images_per_s"]), _n(x["per_trial_images_per_s"]),
             _n(x["speedup"], 2), "yes" if x["graph"] else "no", _n(x["peak_gpu_mem_mb"])] for x in r["rows"]]
    return (f"### Concurrent trials on one device ({r['device']}, {r['seconds']:g} s each)\n\n"
            + _table(rows, ["method", "task", "scale", "trials", "images/s (all)", "images/s (each)", "speed-up",
                            "CUDA graph", "peak memory each (MB)"]))


def trial_split_md(r: dict) -> str:
    parts = r["parts"]
    rows = []
    for x in r["rows"]:
        if "error" in x:
            rows.append([x["method"], x["scale"], f"error: {x['error']}"] + [""] * (len(parts) + 2))
            continue
        cs = x["core_seconds"]
        rows.append([x["method"], x["scale"], x["steps"], *(_n(cs[p]) for p in parts), _n(x["total_core_seconds"]),
                     _pct(x["step_share"])])
    return ("### A benchmark trial's core-seconds by part (in-process, no MLflow, no Ray)\n\n"
            + _table(rows, ["method", "scale", "steps", *parts, "total", "steps' share"]))


SECTIONS = {"steps": steps_md, "host": host_md, "concurrency": concurrency_md, "authors": authors_md, "breakdown": breakdown_md, "flops": flops_md, "sweep": sweep_md, "data": data_md,
            "trial_split": trial_split_md}


def render(results: dict) -> str:
    parts = [machine_line(results["machine"])]
    for item, fn in SECTIONS.items():
        r = results.get("items", {}).get(item)
        if r is None:
            continue
        parts.append(f"### {item}\n\nerror: {r['error']}" if "error" in r else fn(r))
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.table", description="a benchmark JSON as Markdown tables")
    ap.add_argument("results", help="a JSON file written by python -m bench")
    a = ap.parse_args(argv)
    sys.stdout.write(render(json.loads(Path(a.results).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
