"""The workstation path of `make benchmark`, shortened: the quick benchmark's trials, four at a time on one device (as
Ray places them with `resources.gpu: auto`: four trials share a GPU), each a short run of the trial's training code,
their result rows turned into the report. Needs neither Ray nor MLflow (a device image has neither).

    python -m bench.workstation [--device cuda] [--sweep quick] [--steps 50] [--workers 4] [--time-limit S]
                                [--out-dir DIR]

Trials: the sweep config's seeds phase (every method x seed, each method's defaults: the quick benchmark searches
nothing), planned by sweeps.config.plan as a sweep plans them, with train.max_steps = --steps, one evaluation at the
end on --eval-images test images, train.device = --device, one thread each. Each worker process (spawned, its own
CUDA context, as a Ray worker) takes the next trial, resolves and trains it (mist_core.train.Trainer, the code the
Ray trainable runs between its Tune and MLflow calls), and turns its reports into result rows
(sweeps.results.report_rows, the parquet's columns); each trial's rows go to $MIST_BENCH_ROWS as it finishes
(bench.rows). A trial that would start after the deadline is skipped, with a row saying so; one that fails is a row
with its failure line. At the end: results.parquet and the report (analysis.report) in DIR, the wall time, and on
CUDA the GPU's utilisation sampled every second by nvidia-smi while the trials ran.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.rows import emit

__all__ = ["main", "trial_runs"]

WATCHED = ("ray", "mlflow", "optuna")


def trial_runs(sweep: str, steps: int, device: str, eval_images: int) -> list[dict[str, Any]]:
    """The sweep's seeds-phase runs (RunConfig dumps), shortened to `steps`, seed-major (every method's first seed
    before any second seed: a deadline then cuts seeds, not methods)."""
    from sweeps.config import CONFIG_DIR, load_sweep, plan

    cfg = load_sweep(CONFIG_DIR / f"{sweep}.yaml")
    p = plan(cfg)
    runs = []
    for seed in cfg.seeds:
        for cell in p.cells:
            train = {**cell.run.train, "max_steps": steps, "eval_every": steps, "eval_images": eval_images,
                     "final_eval_images": eval_images, "device": device, "threads": 1}
            runs.append({**cell.run.model_dump(), "seed": seed, "train": train, "_sweep": cfg.name})
    return runs


def _worker(jobs, done, deadline: float, parent: int) -> None:  # noqa: ANN001 - multiprocessing queues
    from bench.orphans import die_with_parent

    die_with_parent(parent)
    from mist_core.train import RunConfig, Trainer, resolve
    from sweeps.failures import failure_line
    from sweeps.results import report_rows

    while True:
        job = jobs.get()
        if job is None:
            break
        i, run = job
        sweep = run.pop("_sweep")
        name = f"{run['method']}_{run['dataset']}_s{run['seed']}"
        case = {"trial": name, "method": run["method"], "seed": run["seed"], "worker": os.getpid()}
        if time.time() > deadline:
            row = {**case, "skipped": "the phase's deadline passed before it could start"}
            emit("workstation", "skipped", row)
            done.put(row)
            continue
        t0 = time.time()
        try:
            r = RunConfig(**run)
            resolved = resolve(r)
            tr = Trainer(resolved)
            meta = {"sweep": sweep, "trial": name, "phase": "seeds", "method": r.method, "dataset": r.dataset,
                    "table": "workstation", "task": r.task, "scale": r.scale, "seed": r.seed,
                    "params_json": json.dumps(resolved.as_params(), default=str)}
            rows: list[dict[str, Any]] = []
            tr.run(lambda rep, t: rows.extend(report_rows(meta, rep, time.time() - t0)), progress=False)
            row = {**case, "steps": tr.step, "seconds": time.time() - t0, "train_seconds": tr.train_seconds,
                   "graph": tr.runner.captured, "eager_reason": tr.runner.reason, "device": str(tr.method.device),
                   "loaded_modules": [m for m in WATCHED if m in sys.modules], "rows": rows}
            emit("workstation", "trial", row)
        except Exception as e:  # noqa: BLE001 - one trial failing is a row, the others go on
            row = {**case, "error": failure_line(e), "seconds": time.time() - t0}
            emit("workstation", "error", row)
        done.put(row)


def _gpu_sampler(stop: threading.Event, samples: list[float]) -> None:
    """GPU utilisation (%) from nvidia-smi every second until `stop`."""
    while not stop.wait(1.0):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=5)
            samples.append(float(out.stdout.strip().splitlines()[0]))
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return


def run(a: argparse.Namespace) -> dict[str, Any]:
    import pandas as pd

    from analysis.report import build_report
    from sweeps.results import COLUMNS

    t0 = time.time()
    deadline = t0 + a.time_limit
    runs = trial_runs(a.sweep, a.steps, a.device, a.eval_images)
    ctx = mp.get_context("spawn")
    jobs, done = ctx.Queue(), ctx.Queue()
    for i, r in enumerate(runs):
        jobs.put((i, r))
    for _ in range(a.workers):
        jobs.put(None)
    samples: list[float] = []
    stop = threading.Event()
    sampler = None
    if a.device.startswith("cuda") and shutil.which("nvidia-smi"):
        sampler = threading.Thread(target=_gpu_sampler, args=(stop, samples), daemon=True)
        sampler.start()
    procs = [ctx.Process(target=_worker, args=(jobs, done, deadline, os.getpid()), daemon=True)
             for _ in range(a.workers)]
    for p in procs:
        p.start()
    results = []
    while len(results) < len(runs):
        try:
            results.append(done.get(timeout=max(deadline + 60 - time.time(), 1)))
        except queue.Empty:
            break                                       # a trial still running past the grace: named below
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
    stop.set()
    wall = time.time() - t0
    finished = {r["trial"] for r in results}
    lost = [f"{r['method']}_{r['dataset']}_s{r['seed']}" for r in runs
            if f"{r['method']}_{r['dataset']}_s{r['seed']}" not in finished]
    rows = [row for r in results for row in r.get("rows", [])]
    out_dir = Path(a.out_dir)
    report = None
    if rows:
        df = pd.DataFrame(rows, columns=list(COLUMNS))
        out_dir.mkdir(parents=True, exist_ok=True)
        df.to_parquet(out_dir / "results.parquet", index=False)
        report = str(build_report(df, out_dir / "report", title=f"mist-bench workstation check ({a.sweep}, "
                                                                 f"{a.steps} steps, {a.device})"))
    summary = {"sweep": a.sweep, "device": a.device, "workers": a.workers, "steps": a.steps,
               "trials": len(runs), "trained": sum("rows" in r for r in results),
               "failed": {r["trial"]: r["error"] for r in results if "error" in r},
               "skipped": [r["trial"] for r in results if "skipped" in r] + lost, "wall_s": wall,
               "gpu_util_mean": sum(samples) / len(samples) if samples else None,
               "gpu_util_max": max(samples) if samples else None, "gpu_util_samples": len(samples),
               "report": report, "rows": len(rows)}
    emit("workstation", "summary", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.workstation", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--sweep", default="quick", help="a config of sweeps/configs (default quick: make benchmark's)")
    ap.add_argument("--steps", type=int, default=50, help="training steps per trial (default 50)")
    ap.add_argument("--eval-images", type=int, default=200, help="test images of each trial's one evaluation")
    ap.add_argument("--workers", type=int, default=4, help="trials at once on the device (gpu: auto places 4)")
    ap.add_argument("--time-limit", type=float, default=60.0, help="no trial starts after this many seconds")
    ap.add_argument("--out-dir", default="bench/results/workstation")
    a = ap.parse_args(argv)
    for opt in ("steps", "eval_images", "workers"):
        if getattr(a, opt) < 1:
            ap.error(f"--{opt.replace('_', '-')} must be >= 1, got {getattr(a, opt)}")
    if not 0 < a.time_limit < math.inf:
        ap.error(f"--time-limit must be a finite number > 0, got {a.time_limit}")
    s = run(a)
    print(f"[workstation] {s['trained']}/{s['trials']} trials trained in {s['wall_s']:.0f} s, "
          f"{len(s['failed'])} failed, {len(s['skipped'])} skipped; report {s['report']}", file=sys.stderr, flush=True)
    return 1 if s["failed"] or not s["trained"] else 0


if __name__ == "__main__":
    sys.exit(main())
