"""The whole GPU check in one call with a deadline: host work and step times of every method at two scales (graph and
eager), the concurrency curve, and the paper check's three parts in parallel with whatever time is left; one JSON,
then the tables.

    python -m bench.device_check [--device cuda] [--scale paper|smoke] [--budget 530] [--out FILE.json]

Phases, each a subprocess with its own time cap (one that hangs or fails loses only its own numbers):
  1. python -m bench --only host         every learning method, quick and paper, graph and eager on CUDA (20%)
  2. python -m bench.paper_check --parallel --time-limit <the rest less phase 3's share>  (skipped under MIN_PAPER_S)
  3. python -m bench --only concurrency  1, 2, 4, 8 MIST recon trials on the device (22%)
`--scale smoke --device cpu` runs the same phases shrunk to seconds (the test suite does). bench/device_check.sh runs
this on a lent GPU machine with carried wheels.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cli import write_json_atomic

__all__ = ["main", "bench_argv"]

MIN_PAPER_S = 120.0      # a paper check with less time would train almost nothing


HOST_SHARE, CONCURRENCY_SHARE = 0.20, 0.22


def bench_argv(item: str, device: str, scale: str, out: Path) -> list[str]:
    """`python -m bench` for one item: smoke shrinks it to seconds (--tiny); else host at quick and paper (5 timed,
    2 warm-up, 3 profiled steps each), concurrency at paper."""
    if scale == "smoke":
        return ["bench", "--only", item, "--device", device, "--tiny", "--out", str(out)]
    scales = "quick,paper" if item == "host" else "paper"
    return ["bench", "--only", item, "--device", device, "--scales", scales, "--warmup", "2", "--repeats", "5",
            "--out", str(out)]


def run_phase(name: str, argv: list[str], cap: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    print(f"[device_check] {name}: up to {cap:.0f} s", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run([sys.executable, "-m", *argv], timeout=cap)
        code: int | str = proc.returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    seconds = time.perf_counter() - t0
    print(f"[device_check] {name}: {code} after {seconds:.0f} s", file=sys.stderr, flush=True)
    return {"exit": code, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.device_check", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--scale", default="paper", choices=("paper", "smoke"))
    ap.add_argument("--budget", type=float, default=530.0, help="seconds for everything (the device call's limit "
                    "less the machine's start)")
    ap.add_argument("--out", default="bench/results/device_check.json")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    result: dict[str, Any] = {"schema": 1, "command": ["python", "-m", "bench.device_check", *(argv or sys.argv[1:])],
                              "device": a.device, "scale": a.scale, "budget_s": a.budget, "phases": {}}
    with tempfile.TemporaryDirectory(prefix="device_check_") as tmp:
        out = {name: Path(tmp) / f"{name}.json" for name in ("host", "paper_check", "concurrency")}

        def keep(name: str) -> None:
            if out[name].exists():
                result[name] = json.loads(out[name].read_text())

        result["phases"]["host"] = run_phase("host", bench_argv("host", a.device, a.scale, out["host"]),
                                             HOST_SHARE * a.budget)
        keep("host")
        left = a.budget - (time.perf_counter() - t_start) - CONCURRENCY_SHARE * a.budget - 15
        if left >= MIN_PAPER_S or a.scale == "smoke":
            argv_pc = ["bench.paper_check", "--device", a.device, "--scale", a.scale, "--parallel",
                       "--time-limit", f"{max(left, 30):.0f}", "--out", str(out["paper_check"])]
            if a.scale == "smoke":
                argv_pc += ["--steps", "4", "--threads", "1"]
            result["phases"]["paper_check"] = run_phase("paper_check", argv_pc, max(left, 30) + 60)
            keep("paper_check")
        else:
            result["phases"]["paper_check"] = {"exit": "skipped", "reason": f"{left:.0f} s left, under {MIN_PAPER_S:g}"}
        cap = max(a.budget - (time.perf_counter() - t_start) - 5, 30)
        result["phases"]["concurrency"] = run_phase(
            "concurrency", bench_argv("concurrency", a.device, a.scale, out["concurrency"]), cap)
        keep("concurrency")
    result["total_seconds"] = time.perf_counter() - t_start
    write_json_atomic(a.out, result)
    print(f"[device_check] wrote {a.out} after {result['total_seconds']:.0f} s", file=sys.stderr, flush=True)
    from bench.table import render

    for name in ("host", "concurrency"):
        if name in result:
            print(render(result[name]))
    failed = [n for n, p in result["phases"].items() if p["exit"] not in (0, "skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
