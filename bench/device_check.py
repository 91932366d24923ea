"""The whole GPU check in one device call that keeps every row it measured: host work and step times of every method
(graph and eager), the concurrency curve, the workstation path of the quick benchmark (bench.workstation) and the
paper check's three parts; tables from whatever rows exist.

    python -m bench.device_check [--device cuda] [--scale paper|smoke] [--budget 360] [--out-dir DIR]
    python -m bench.device_check --plan [--budget 360]        # the phases and their seconds; runs nothing
    python -m bench.device_check tables DIR/rows.jsonl        # the tables from the rows of a run, however it ended

Every measurement is appended to DIR/rows.jsonl the moment it exists (bench.rows: flushed and fsync'd, also from
the phases' own processes and the concurrency phase's workers as each finishes), so a time limit, a crash or a
signal loses at most the measurement under way. Each phase is a subprocess with its own deadline (its share of
--budget, or the time left if less): inside it, `host` and `concurrency` skip the cases that would end after it and
the paper check cuts its step budgets to it; past it (plus a few seconds' grace) the phase is stopped. A phase whose
time does not fit is skipped with a row saying so. At the end, also after SIGTERM, SIGINT or an error, the tables
are printed and written (DIR/tables.md, DIR/device_check.json) from the rows. After a SIGKILL, `tables` prints them.
`--scale smoke --device cpu` runs the same phases shrunk to seconds (the test suite does). bench/device_check.sh
runs this on a lent GPU machine with carried wheels.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.orphans import die_with_parent
from bench.rows import ROWS_ENV, append, read

__all__ = ["main", "PHASES", "plan", "render_rows", "bench_argv"]

DEFAULT_BUDGET_S = 360.0   # one device call's share: a second call still fits a task's 15 minutes with two starts
GRACE_S = 10.0             # past a phase's deadline: time for its process to write what it has before it is stopped


@dataclass(frozen=True)
class Phase:
    name: str
    share: float           # of --budget
    min_paper_s: float     # at paper scale, less time than this is not worth starting: skipped, saying why
    what: str


PHASES: tuple[Phase, ...] = (
    Phase("host", 0.25, 20.0, "every learning method at quick and paper scale, CUDA graph and eager: ms/step, "
          "aten ops, launches, sync calls, kernel share"),
    Phase("concurrency", 0.15, 25.0, "1, 2, 4, 8 concurrent MIST recon trials on the device (5 s windows): "
          "aggregate images/s"),
    Phase("workstation", 0.17, 30.0, "the quick benchmark's trials, 4 processes sharing the device, 50 steps "
          "each, rows -> report; wall time, GPU utilisation, failures"),
    Phase("paper_check", 0.33, 90.0, "MIST classify, MIST recon, grid recon at paper scale, in parallel processes, "
          "full fp32, step budgets cut to the time"),
)
RESERVE_SHARE = 1.0 - sum(p.share for p in PHASES)   # the interpreter's start, machine info, tables, the copy back


class Interrupted(BaseException):
    """A signal ended the check: the finally block still stops the phase and prints the tables."""


def plan(budget: float) -> list[tuple[str, float, str]]:
    """(phase, seconds, what) for each phase, then the reserve; the seconds add up to `budget`."""
    return [(p.name, p.share * budget, p.what) for p in PHASES] + [
        ("reserve", RESERVE_SHARE * budget, "interpreter start, machine info, tables (not a phase)")]


def plan_text(budget: float, device: str, scale: str) -> str:
    rows = plan(budget)
    lines = [f"device_check plan (nothing run): device {device}, scale {scale}, budget {budget:g} s",
             "| phase | seconds | what |", "|---|---|---|"]
    lines += [f"| {n} | {s:.0f} | {w} |" for n, s, w in rows]
    lines.append(f"device seconds in all: {sum(s for _, s, _ in rows):.0f} (the machine's start not included)")
    return "\n".join(lines)


def bench_argv(item: str, device: str, scale: str, out: Path, time_limit: float) -> list[str]:
    """`python -m bench` for one item: smoke shrinks it to seconds (--tiny); else host at quick and paper (5 timed,
    2 warm-up, 3 profiled steps each), concurrency at paper with 5 s windows."""
    common = ["--device", device, "--out", str(out), "--time-limit", f"{time_limit:.0f}"]
    if scale == "smoke":
        return ["bench", "--only", item, "--tiny", *common]
    if item == "host":
        return ["bench", "--only", "host", "--scales", "quick,paper", "--warmup", "2", "--repeats", "5", *common]
    return ["bench", "--only", item, "--scales", "paper", "--concurrency-seconds", "5", *common]


def phase_argv(name: str, device: str, scale: str, out_dir: Path, time_limit: float) -> list[str]:
    out = out_dir / f"{name}.json"
    if name in ("host", "concurrency"):
        return bench_argv(name, device, scale, out, time_limit)
    if name == "workstation":
        argv = ["bench.workstation", "--device", device, "--out-dir", str(out_dir / "workstation"), "--time-limit",
                f"{max(time_limit - 20, 1):.0f}"]                 # the last trials and the report fit the phase
        return argv + (["--sweep", "smoke", "--steps", "2", "--eval-images", "8", "--workers", "2"]
                       if scale == "smoke" else [])
    argv = ["bench.paper_check", "--device", device, "--scale", scale, "--parallel", "--time-limit",
            f"{time_limit:.0f}", "--out", str(out)]
    return argv + (["--steps", "4", "--threads", "1"] if scale == "smoke" else [])


def log(msg: str) -> None:
    print(f"[device_check] {msg}", file=sys.stderr, flush=True)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 5 s: its own children die with it (bench.orphans)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _on_signal(signum: int, frame: Any) -> None:  # noqa: ARG001 - signal handler signature
    raise Interrupted(signal.Signals(signum).name)


def run(a: argparse.Namespace) -> int:
    from bench.machine import machine_info

    t_start = time.time()
    out_dir = Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows_path = out_dir / "rows.jsonl"
    rows_path.unlink(missing_ok=True)                 # one run's rows per directory
    os.environ[ROWS_ENV] = str(rows_path)             # the phases' processes append their rows here
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    deadline = t_start + a.budget
    budgets = {n: s for n, s, _ in plan(a.budget)}
    append(rows_path, {"phase": "device_check", "kind": "start", "t": t_start, "device": a.device, "scale": a.scale,
                       "budget_s": a.budget, "plan": budgets, "machine": machine_info(a.device)})
    proc: subprocess.Popen | None = None
    status, failed = "finished", []
    try:
        for p in PHASES:
            left = deadline - time.time() - budgets["reserve"] / 2       # keep time for the tables
            cap = min(budgets[p.name], left)
            need = p.min_paper_s if a.scale == "paper" else 1.0
            if cap < need:
                why = f"{max(cap, 0):.0f} s left for it, under the {need:.0f} s it needs"
                log(f"{p.name}: skipped ({why})")
                append(rows_path, {"phase": p.name, "kind": "phase", "t": time.time(), "exit": "skipped",
                                   "reason": why, "budget_s": cap})
                continue
            log(f"{p.name}: up to {cap:.0f} s")
            append(rows_path, {"phase": p.name, "kind": "phase_start", "t": time.time(), "budget_s": cap})
            t0 = time.time()
            proc = subprocess.Popen([sys.executable, "-m", *phase_argv(p.name, a.device, a.scale, out_dir, cap - 5)],
                                    preexec_fn=die_with_parent)
            try:
                code: int | str = proc.wait(timeout=cap + GRACE_S)
            except subprocess.TimeoutExpired:
                _stop(proc)
                code = "timeout"
            proc = None
            log(f"{p.name}: {code} after {time.time() - t0:.0f} s")
            append(rows_path, {"phase": p.name, "kind": "phase", "t": time.time(), "exit": code,
                               "seconds": time.time() - t0, "budget_s": cap})
            if code != 0:
                failed.append(p.name)
    except Interrupted as e:
        status = f"interrupted by {e}"
        log(status)
    except Exception as e:  # noqa: BLE001 - the rows so far still become tables
        status = f"error: {type(e).__name__}: {e}"
        log(status)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)      # the tables are written once, whatever arrives now
        if proc is not None:
            _stop(proc)
        append(rows_path, {"phase": "device_check", "kind": "end", "t": time.time(), "status": status,
                           "seconds": time.time() - t_start})
        finish(out_dir, rows_path)
    return 0 if status == "finished" and not failed else 1


def finish(out_dir: Path, rows_path: Path) -> None:
    """device_check.json (every row) and tables.md beside the rows, the tables on stdout."""
    from bench.cli import write_json_atomic
    from sweeps.results import write_atomic

    rows = read(rows_path)
    write_json_atomic(out_dir / "device_check.json", {"schema": 2, "rows": rows})
    text = render_rows(rows)
    write_atomic(out_dir / "tables.md", text.encode())
    sys.stdout.write(text)
    sys.stdout.flush()


# --- tables from rows ------------------------------------------------------------------------------------------------
def _of(rows: list[dict], phase: str, *kinds: str) -> list[dict]:
    return [r for r in rows if r.get("phase") == phase and r.get("kind") in kinds]


def render_rows(rows: list[dict]) -> str:
    """Markdown: what ran (each phase's exit, seconds, or why skipped), then a table per phase of its rows."""
    from bench.table import _n, _table, concurrency_md, host_md, machine_line

    start = next((r for r in rows if r.get("kind") == "start"), None)
    end = next((r for r in rows if r.get("phase") == "device_check" and r.get("kind") == "end"), None)
    out = []
    if start:
        out.append(machine_line(start["machine"]))
        out.append(f"Device check at {start['scale']} scale on {start['device']}, budget {start['budget_s']:g} s; "
                   + (f"{end['status']} after {end['seconds']:.0f} s." if end else
                      "no end row: the check was killed (these are the rows written before)."))
    phases = [[r["phase"], _n(r.get("budget_s")), str(r["exit"]), _n(r.get("seconds")), r.get("reason", "")]
              for r in rows if r.get("kind") == "phase"]
    started = {r["phase"] for r in rows if r.get("kind") == "phase_start"} - {x[0] for x in phases}
    phases += [[p, "-", "did not finish", "-", "stopped while it ran"] for p in sorted(started)]
    out.append("### Phases\n\n" + _table(phases, ["phase", "budget s", "exit", "seconds", "note"]))

    host = _of(rows, "host", "row", "error", "skipped")
    if host:
        out.append(host_md({"dataset": "mnist_hard", "device": host[0].get("device", "-"),
                            "profile_steps": host[0].get("profile_steps", "-"), "rows": host}))
    levels = _of(rows, "concurrency", "row", "skipped") + [r for r in _of(rows, "concurrency", "error")
                                                            if "worker" not in r]
    if levels:
        out.append(concurrency_md({"device": levels[0].get("device", "-"), "seconds": levels[0].get("seconds", 0),
                                   "rows": levels}))
    done = {r["n"] for r in levels}
    workers = [r for r in _of(rows, "concurrency", "worker", "error") if "worker" in r and r["n"] not in done]
    if workers:
        out.append("### Concurrent workers of levels that did not finish\n\n" + _table(
            [[r["n"], r["worker"], f"error: {r['error']}" if "error" in r else r["steps"],
              _n(r["images"] / r["seconds"]) if "error" not in r else "", _n(r.get("peak_gpu_mem_mb"))]
             for r in workers], ["trials", "worker", "steps", "images/s", "peak memory (MB)"]))
    trials = _of(rows, "workstation", "trial", "error", "skipped")
    summary = next(iter(_of(rows, "workstation", "summary")), None)
    if trials:
        def final(r: dict, metric: str) -> float | None:
            return next((x["value"] for x in r.get("rows", []) if x["final"] and x["metric"] == metric), None)

        text = "### Workstation path (the quick benchmark's trials sharing one device)\n\n" + _table(
            [[r["trial"], r.get("worker", "-"), r.get("steps", "-"), _n(r.get("seconds")),
              "yes" if r.get("graph") else "no", _n(final(r, "rmse")), _n(final(r, "det_rate")),
              f"error: {r['error']}" if "error" in r else f"skipped: {r['skipped']}" if "skipped" in r else ""]
             for r in trials], ["trial", "worker", "steps", "seconds", "CUDA graph", "RMSE", "detection", "note"])
        if summary:
            util = ("-" if summary["gpu_util_mean"] is None else
                    f"{summary['gpu_util_mean']:.0f}% mean, {summary['gpu_util_max']:.0f}% max over "
                    f"{summary['gpu_util_samples']} samples")
            text += (f"\n\n{summary['trained']}/{summary['trials']} trials trained by {summary['workers']} processes "
                     f"in {summary['wall_s']:.0f} s wall; GPU utilisation {util}; failed: "
                     f"{', '.join(summary['failed']) or 'none'}; report: {summary['report']}.")
        out.append(text)
    parts = _of(rows, "paper_check", "part")
    timing = {r["part"]: r for r in _of(rows, "paper_check", "timing")}
    if parts or timing:
        table = []
        for name in sorted({*timing, *(r["part"] for r in parts)}):
            r = next((x for x in parts if x["part"] == name), {})
            t, m = timing.get(name, {}), r.get("metrics", {})
            table.append([name, _n(t.get("step_ms")), "yes" if t.get("graph") else "no", _n(t.get("kernel_share")),
                          r.get("steps", "not finished"), _n(r.get("images_per_s")), _n(m.get("det_rate")),
                          _n(m.get("both")), _n(m.get("rmse")), _n(r.get("peak_gpu_mem_mb"))])
        out.append("### Paper check parts\n\n" + _table(table, [
            "part", "ms/step (timed)", "CUDA graph", "kernel share", "steps", "images/s", "detection", "Both", "RMSE",
            "peak GPU MB"]))
    return "\n\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["tables"]:
        tp = argparse.ArgumentParser(prog="python -m bench.device_check tables",
                                     description="the tables from a device check's rows, however it ended")
        tp.add_argument("rows", help="rows.jsonl of a device check")
        path = Path(tp.parse_args(argv[1:]).rows)
        if not path.exists():
            tp.error(f"{path}: no such file")
        sys.stdout.write(render_rows(read(path)))
        return 0
    ap = argparse.ArgumentParser(prog="python -m bench.device_check", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--scale", default="paper", choices=("paper", "smoke"))
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for everything, from the first "
                    f"import to the tables (default {DEFAULT_BUDGET_S:g})")
    ap.add_argument("--out-dir", default="bench/results/device_check", help="rows.jsonl, device_check.json, "
                    "tables.md and each phase's JSON")
    ap.add_argument("--plan", action="store_true", help="print the phases and their seconds; run nothing")
    a = ap.parse_args(argv)
    if not 0 < a.budget < float("inf"):
        ap.error(f"--budget must be a finite number > 0, got {a.budget}")
    if a.plan:
        print(plan_text(a.budget, a.device, a.scale))
        return 0
    return run(a)


if __name__ == "__main__":
    sys.exit(main())
