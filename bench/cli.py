"""The command line: run the selected items, print progress to stderr, write one JSON file atomically.

    python -m bench [--only steps,host,concurrency,breakdown,flops,sweep,data,authors] [--scales quick,paper] [--methods mist,grid]
                    [--datasets mnist_hard,gabor] [--device cpu|cuda] [--repeats N] [--warmup N] [--threads N]
                    [--sweep-trials N] [--sweep-seconds S] [--tiny] --out FILE.json

Defaults: every item (`authors` ignores --scales, --methods and --datasets: its configuration is fixed); scales
quick on the CPU, quick,paper on CUDA; every registered method; OMP_NUM_THREADS threads, else torch's default.
--tiny shrinks everything to seconds, on 1 thread (bench.settings.Settings.tiny_defaults); explicit options
still apply.
Bad options: exit status 2 before anything runs. An item that raises is recorded as {"error": ...} (a method that
fails in `steps`: its row) and the others still run; the exit status is then 1.
JSON: {"schema", "command", "settings", "machine", "items": {item: result}, "seconds"}.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
import traceback
from pathlib import Path

from bench import DEFAULT_ITEMS, ITEMS, SCHEMA_VERSION
from bench.settings import Settings
from sweeps.command import Parser
from sweeps.results import write_atomic

__all__ = ["main", "parse_args", "settings_from_args", "write_json_atomic", "finite_json"]


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = Parser(prog="python -m bench", description="mist-bench performance benchmarks (bench/): "
                "run the selected items, write one JSON file (python -m bench.table renders it)")
    ap.add_argument("--only", type=_csv, default=DEFAULT_ITEMS,
                    help=f"items to run, comma-separated ({','.join(ITEMS)}; default: all but trial_split)")
    ap.add_argument("--scales", type=_csv, help="smoke, quick, paper (default: quick; quick,paper on cuda)")
    ap.add_argument("--methods", type=_csv, default=(), help="methods for `steps` (default: every registered one)")
    ap.add_argument("--datasets", type=_csv, default=(), help="generators for `data` (default: every one)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    ap.add_argument("--repeats", type=int, help="timed steps/calls per measurement (default 20; --tiny 2; data: 3)")
    ap.add_argument("--warmup", type=int, help="untimed calls first (default 3; --tiny 1)")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: OMP_NUM_THREADS, else torch's)")
    ap.add_argument("--sweep-trials", type=int, help="trials of the `sweep` item (default: 2 per core; --tiny 2)")
    ap.add_argument("--sweep-seconds", type=float, help="training seconds per sweep trial (default 10; --tiny 1)")
    ap.add_argument("--concurrency-seconds", type=float, help="measuring window per concurrency level (default 10; "
                    "--tiny 2)")
    ap.add_argument("--time-limit", type=float, help="seconds from the start: `host` and `concurrency` skip the "
                    "cases that would end later (a row says so), so what was measured is written in time")
    ap.add_argument("--tiny", action="store_true", help="everything shrunk to seconds (tests)")
    ap.add_argument("--out", required=True, help="the JSON file to write (its directory is created)")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return ap.parse_args(argv)


def settings_from_args(a: argparse.Namespace) -> Settings:
    s = Settings()
    if a.tiny:
        s = s.replace(**Settings.tiny_defaults())
    changes: dict = {"device": a.device, "methods": a.methods, "data_generators": a.datasets}
    if a.threads is not None:
        changes["threads"] = a.threads
    if a.scales:
        changes["scales"] = a.scales
    elif a.device.startswith("cuda") and not a.tiny:
        changes["scales"] = ("quick", "paper")
    if a.repeats is not None:
        changes["repeats"] = a.repeats
    if a.warmup is not None:
        changes["warmup"] = a.warmup
    if a.sweep_trials is not None:
        changes["sweep_trials"] = a.sweep_trials
    if a.sweep_seconds is not None:
        changes["sweep_seconds"] = a.sweep_seconds
    if a.concurrency_seconds is not None:
        changes["concurrency_seconds"] = a.concurrency_seconds
    if a.time_limit is not None:
        changes["deadline"] = time.time() + a.time_limit
    return s.replace(**changes)


def _validate(a: argparse.Namespace, s: Settings) -> None:
    """ValueError naming the first bad option (before anything runs)."""
    from mist_core.data import DATASETS
    from mist_core.method import SCALES
    from mist_core.registry import get_method
    from sweeps.preflight import device_problems, nonfinite_problems

    unknown = [i for i in a.only if i not in ITEMS]
    if unknown:
        raise ValueError(f"--only: unknown item(s) {', '.join(unknown)}; known: {', '.join(ITEMS)}")
    bad = [x for x in s.scales if x not in SCALES]
    if bad:
        raise ValueError(f"--scales: unknown scale(s) {', '.join(bad)}; known: {', '.join(SCALES)}")
    missing = [d for d in (*s.data_generators, s.dataset) if d not in DATASETS]
    if missing:
        raise ValueError(f"--datasets: unknown dataset(s) {', '.join(missing)}; known: {', '.join(sorted(DATASETS))}")
    for m in s.methods:
        try:
            get_method(m)
        except (KeyError, ImportError, TypeError) as e:
            raise ValueError(f"--methods: {e}") from None
    if s.repeats < 1 or s.warmup < 0 or (s.sweep_trials is not None and s.sweep_trials < 1) or s.sweep_seconds <= 0:
        raise ValueError("--repeats and --sweep-trials must be >= 1, --warmup >= 0, --sweep-seconds > 0")
    if s.threads is not None and s.threads < 1:
        raise ValueError(f"--threads: must be >= 1, got {s.threads}")
    # the checks every entry point shares (sweeps.preflight)
    if s.concurrency_seconds <= 0 or (a.time_limit is not None and a.time_limit <= 0):
        raise ValueError("--concurrency-seconds and --time-limit must be > 0")
    problems = (nonfinite_problems(s.sweep_seconds, "--sweep-seconds")
                + nonfinite_problems(s.concurrency_seconds, "--concurrency-seconds")
                + nonfinite_problems(a.time_limit, "--time-limit") + device_problems(s.device, field="--device"))
    if problems:
        raise ValueError("; ".join(problems))


def finite_json(x):
    """JSON has no NaN/inf: they become null (and are easy to spot)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite_json(v) for v in x]
    return x


def write_json_atomic(path: str | Path, data: dict) -> None:
    """`data` as JSON (non-finite floats as null), written atomically (sweeps.results.write_atomic)."""
    write_atomic(path, (json.dumps(finite_json(data), indent=1, allow_nan=False) + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    from sweeps.command import run_command

    a = parse_args(argv)
    return run_command(lambda: _run(a, argv), a.debug)


def _run(a: argparse.Namespace, argv: list[str] | None) -> int:
    from sweeps.command import CommandError, writable_file

    s = settings_from_args(a)
    try:
        _validate(a, s)
    except ValueError as e:
        raise CommandError(str(e)) from None
    writable_file(a.out, "--out")   # before minutes of measuring, not after
    from bench.machine import machine_info
    from mist_core._runtime import configure_torch

    configure_torch(s.threads)       # flush denormals (as every training process) and the thread count
    t0 = time.perf_counter()
    command = ["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)]
    out: dict = {"schema": SCHEMA_VERSION, "command": command, "settings": s.as_json(),
                 "machine": machine_info(s.device), "items": {}}
    failed = []
    for item in ITEMS:               # a fixed order, whatever the order of --only
        if item not in a.only:
            continue
        print(f"[bench] {item} ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        try:
            out["items"][item] = importlib.import_module(f"bench.{item}").run(s)
        except Exception as e:  # noqa: BLE001 - keep the other items' numbers
            traceback.print_exc(file=sys.stderr)
            out["items"][item] = {"error": f"{type(e).__name__}: {e}"}
            failed.append(item)
        bad_rows = [r for r in out["items"][item].get("rows", []) if "error" in r]
        if bad_rows and item not in failed:
            failed.append(item)
        out["items"][item]["seconds"] = time.perf_counter() - t
        print(f"[bench] {item}: {out['items'][item]['seconds']:.1f} s", file=sys.stderr, flush=True)
    out["seconds"] = time.perf_counter() - t0
    write_json_atomic(a.out, out)
    print(f"[bench] wrote {a.out}" + (f" (failed: {', '.join(failed)})" if failed else ""), file=sys.stderr)
    return 1 if failed else 0
