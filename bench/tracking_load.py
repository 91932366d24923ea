"""Load test of the tracking path: N concurrent writer processes, each logging like a fast GPU trial, against SQLite
on local disk and against the MLflow server on PostgreSQL + S3 (bench.stack); every point is counted back.

    python -m bench.tracking_load [--writers 8,32,64] [--batches 300] [--metrics 10] [--interval 0.1]
                                  [--figure-every 10] [--figure-kb 54] [--backends sqlite,server]
                                  [--server-workers 4] --out bench/measured/tracking-load.json

A writer is what a trial does (sweeps.tracking.TrialRun: its run found or created, params logged, then
`log_report` and `log_file`): a batch of --metrics metrics at one step every --interval seconds (on a fixed
schedule; a writer that falls behind logs its next batch at once), a figure of --figure-kb KiB every --figure-every
seconds, --batches batches in all. All writers start logging together, once every one has imported MLflow and
opened its run. Afterwards each run's metric history is read back through MLflow: a step missing is lost, a step
twice is duplicated, a value other than the one sent is wrong; figures are listed and counted the same way.

Per (backend, writers): log-call latency p50/p95/max (ms, a batch's call including sweeps.tracking's retries on
"database is locked"), figure upload latency, achieved batches/s and points/s against the target, how late the
slowest writer finished (s behind its schedule), errors (calls that raised after their retries), lost, duplicated
and wrong points, and the CPU seconds of the writers, the server (with its workers) and PostgreSQL. Not a test:
timings depend on the machine; the JSON says which (bench.machine).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "writer", "count_back"]

EXPERIMENT = "tracking-load"


def _value(writer_idx: int, step: int, k: int) -> float:
    """The value writer `writer_idx` logs for metric k at `step`: unique, so a misplaced point is caught."""
    return writer_idx * 1_000_000 + step + k / 100


def writer(uri: str, experiment_id: str, parent: str, idx: int, cfg: dict[str, Any], ready, go, out) -> None:
    """One writer process: open its run, signal ready, wait for `go`, log on schedule, report timings to `out`."""
    from sweeps import tracking

    result: dict[str, Any] = {"idx": idx, "latency_s": [], "figure_s": [], "errors": [], "late_s": 0.0}
    try:
        run = tracking.TrialRun(uri, experiment_id, parent, f"load/{idx}", f"writer-{idx:03d}",
                                {"writer": idx}, {"writer": idx, "batches": cfg["batches"]})
        fig = Path(tempfile.mkdtemp(prefix="fig-")) / "figure.png"
        fig.write_bytes(os.urandom(cfg["figure_kb"] * 1024))  # incompressible, the size of a real figure
        result["run_id"] = run.run_id
    except Exception as e:  # noqa: BLE001 - reported, the others go on
        result["errors"].append(f"open: {type(e).__name__}: {e}"[:300])
        ready.put(idx)
        out.put(result)
        return
    ready.put(idx)
    go.wait()
    every = max(1, round(cfg["figure_every"] / cfg["interval"]))
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    for step in range(cfg["batches"]):
        wait = t0 + step * cfg["interval"] - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        t = time.perf_counter()
        try:
            run.log_report({f"m{k}": _value(idx, step, k) for k in range(cfg["metrics"])}, step=step)
        except Exception as e:  # noqa: BLE001
            result["errors"].append(f"step {step}: {type(e).__name__}: {e}"[:300])
        result["latency_s"].append(time.perf_counter() - t)
        if step % every == every - 1:
            t = time.perf_counter()
            try:
                run.log_file(fig, f"figures/step_{step:06d}")
            except Exception as e:  # noqa: BLE001
                result["errors"].append(f"figure {step}: {type(e).__name__}: {e}"[:300])
            result["figure_s"].append(time.perf_counter() - t)
    result["late_s"] = time.perf_counter() - t0 - (cfg["batches"] - 1) * cfg["interval"]
    result["cpu_s"] = time.process_time() - cpu0
    try:
        run.finish("FINISHED")
    except Exception as e:  # noqa: BLE001
        result["errors"].append(f"finish: {type(e).__name__}: {e}"[:300])
    out.put(result)


def count_back(uri: str, runs: dict[int, str], cfg: dict[str, Any]) -> dict[str, int]:
    """Read every writer's metrics and figures back: lost, duplicated, wrong points; missing figures."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    every = max(1, round(cfg["figure_every"] / cfg["interval"]))
    want_figures = cfg["batches"] // every
    n = {"points": 0, "lost": 0, "duplicated": 0, "wrong": 0, "figures": 0, "figures_missing": 0}
    for idx, run_id in runs.items():
        for k in range(cfg["metrics"]):
            hist = client.get_metric_history(run_id, f"m{k}")
            steps = [m.step for m in hist]
            n["points"] += len(hist)
            n["lost"] += len(set(range(cfg["batches"])) - set(steps))
            n["duplicated"] += len(steps) - len(set(steps))
            n["wrong"] += sum(m.value != _value(idx, m.step, k) for m in hist)
        got = len(client.list_artifacts(run_id, "figures"))
        n["figures"] += got
        n["figures_missing"] += max(0, want_figures - got)
    n["lost"] += cfg["metrics"] * cfg["batches"] * (cfg["writers"] - len(runs))  # writers that never opened a run
    return n


def _cpu_seconds(pids: set[int]) -> float:
    """utime + stime of `pids` (live ones) in seconds, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        f = stat[stat.rindex(")") + 2:].split()
        total += int(f[11]) + int(f[12])
    return total / tick


def _group(pgid: int) -> set[int]:
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.getpgid(int(d)) == pgid:
                    out.add(int(d))
            except OSError:
                pass
    return out


def _postgres_pids() -> set[int]:
    """Every process of the postgres user (the stack's server and its backends)."""
    import pwd

    try:
        uid = pwd.getpwnam("postgres").pw_uid
    except KeyError:
        uid = os.getuid()
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat(f"/proc/{d}").st_uid == uid and "postgres" in Path(f"/proc/{d}/comm").read_text():
                    out.add(int(d))
            except OSError:
                pass
    return out


def _machine_cpu() -> float:
    """Busy CPU seconds of the whole machine so far (/proc/stat: all but idle and iowait)."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def run_one(backend: str, uri: str, n: int, cfg: dict[str, Any], server_pids=lambda: set()) -> dict[str, Any]:
    """One measurement: `n` writers against `uri`."""
    from sweeps import tracking

    cfg = {**cfg, "writers": n}
    name = f"{EXPERIMENT}-{backend}-{n}"
    experiment_id = tracking.prepare(uri, name)  # the store (SQLite: created here, before any writer)
    parent = tracking.open_sweep_run(uri, experiment_id, name, name, tags={}, params={"writers": n})
    ctx = mp.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=writer, args=(uri, experiment_id, parent, i, cfg, ready, go, out)) for i in range(n)]
    t_spawn = time.perf_counter()
    for p in procs:
        p.start()
    for _ in range(n):
        ready.get(timeout=600)
    startup = time.perf_counter() - t_spawn
    srv0, pg0, m0 = _cpu_seconds(server_pids()), _cpu_seconds(_postgres_pids()), _machine_cpu()
    t0 = time.perf_counter()
    go.set()
    results = [out.get(timeout=3600) for _ in range(n)]
    wall = time.perf_counter() - t0
    srv1, pg1, m1 = _cpu_seconds(server_pids()), _cpu_seconds(_postgres_pids()), _machine_cpu()
    for p in procs:
        p.join(timeout=60)
    tracking.close_sweep_run(uri, experiment_id, parent, "FINISHED")
    lat = [x for r in results for x in r["latency_s"]]
    figs = [x for r in results for x in r["figure_s"]]
    errors = [e for r in results for e in r["errors"]]
    t_count = time.perf_counter()
    counted = count_back(uri, {r["idx"]: r["run_id"] for r in results if "run_id" in r}, cfg)
    batches = n * cfg["batches"]
    row = {
        "backend": backend, "writers": n, "batches_per_writer": cfg["batches"], "metrics_per_batch": cfg["metrics"],
        "points_sent": batches * cfg["metrics"], **counted,
        "errors": len(errors), "error_examples": errors[:5],
        "target_batches_per_s": n / cfg["interval"], "batches_per_s": batches / wall,
        "points_per_s": batches * cfg["metrics"] / wall, "figures_per_s": len(figs) / wall,
        "log_ms_p50": 1e3 * _pct(lat, .5), "log_ms_p95": 1e3 * _pct(lat, .95), "log_ms_max": 1e3 * max(lat),
        "figure_ms_p50": 1e3 * (_pct(figs, .5) or 0), "figure_ms_p95": 1e3 * (_pct(figs, .95) or 0),
        "slowest_writer_late_s": max(r["late_s"] for r in results), "wall_s": wall,
        "scheduled_s": (cfg["batches"] - 1) * cfg["interval"], "writers_startup_s": startup,
        "cpu_s_writers": sum(r.get("cpu_s", 0.0) for r in results), "cpu_s_server": srv1 - srv0,
        "cpu_s_postgres": pg1 - pg0, "cpu_s_machine": m1 - m0, "count_back_s": time.perf_counter() - t_count,
    }
    row["machine_cpu_busy"] = row["cpu_s_machine"] / (wall * os.cpu_count())
    print(f"[tracking_load] {backend:6s} {n:3d} writers: {row['batches_per_s']:.0f}/{row['target_batches_per_s']:.0f}"
          f" batches/s, log p50 {row['log_ms_p50']:.0f} ms p95 {row['log_ms_p95']:.0f} ms, lost {row['lost']}, "
          f"duplicated {row['duplicated']}, wrong {row['wrong']}, errors {row['errors']}, figures missing "
          f"{row['figures_missing']}, {wall:.0f} s", file=sys.stderr, flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    from sweeps.command import Parser, run_command

    ap = Parser(prog="python -m bench.tracking_load", description=__doc__.split("\n\n")[0])
    ap.add_argument("--writers", default="8,32,64", help="concurrent writer counts, comma-separated")
    ap.add_argument("--batches", type=int, default=300, help="metric batches per writer")
    ap.add_argument("--metrics", type=int, default=10, help="metrics per batch")
    ap.add_argument("--interval", type=float, default=0.1, help="seconds between a writer's batches")
    ap.add_argument("--figure-every", type=float, default=10.0, help="seconds between a writer's figures")
    ap.add_argument("--figure-kb", type=int, default=54, help="KiB per figure (a real one: ~54)")
    ap.add_argument("--backends", default="sqlite,server", help="sqlite, server (PostgreSQL + S3), comma-separated")
    ap.add_argument("--server-workers", type=int, default=4, help="uvicorn workers of the server (default 4)")
    ap.add_argument("--out", required=True, help="the JSON file to write")
    ap.add_argument("--debug", action="store_true")
    a = ap.parse_args(argv)
    return run_command(lambda: _run(a, argv), a.debug)


def _run(a: argparse.Namespace, argv: list[str] | None) -> int:
    from bench.cli import write_json_atomic
    from bench.machine import machine_info
    from sweeps.command import CommandError, writable_file

    writable_file(a.out, "--out")
    counts = [int(x) for x in a.writers.split(",") if x.strip()]
    backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    if not counts or min(counts) < 1 or set(backends) - {"sqlite", "server"} or a.batches < 1 or a.interval <= 0:
        raise CommandError("--writers (>= 1), --backends (sqlite, server), --batches >= 1, --interval > 0")
    cfg = {"batches": a.batches, "metrics": a.metrics, "interval": a.interval, "figure_every": a.figure_every,
           "figure_kb": a.figure_kb}
    rows = []
    t0 = time.perf_counter()
    if "sqlite" in backends:
        for n in counts:
            with tempfile.TemporaryDirectory(prefix="load-sqlite-") as d:
                rows.append(run_one("sqlite", f"sqlite:///{d}/mlflow.db", n, cfg))
    if "server" in backends:
        from bench.stack import local_stack, missing

        lacks = missing()
        if lacks:
            raise CommandError(lacks)
        for n in counts:  # a fresh stack each time: every count starts from an empty database and bucket
            with local_stack(workers=a.server_workers) as st:
                rows.append(run_one("server", st.url, n, cfg, lambda st=st: _group(st.server.procs[0].pid)))
    command = ["python", "-m", "bench.tracking_load", *(sys.argv[1:] if argv is None else argv)]
    write_json_atomic(a.out, {"command": command, "settings": {**cfg, "writers": counts, "backends": backends,
                                                               "server_workers": a.server_workers},
                              "machine": machine_info("cpu"), "rows": rows, "seconds": time.perf_counter() - t0})
    print(f"[tracking_load] wrote {a.out}", file=sys.stderr)
    bad = [r for r in rows if r["backend"] == "server" and (r["lost"] or r["duplicated"] or r["wrong"])]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
