"""Sweep utilisation: how much of a local Ray sweep's machine time goes to training steps.

Runs the project's own sweep (sweeps.run.run_sweep) on a SweepConfig built here: `sweep_trials` trials (seeds
0..N-1, no search) of `sweep_method` at `sweep_scale` on the benchmark dataset, each with `sweep_seconds` of
training (budget.max_seconds), 1 CPU per trial, on a private local Ray instance with every usable core; storage,
MLflow store (sqlite) and dataset cache in a temporary directory that is removed afterwards.
From the tidy results (sweeps.results.load_results, the final report of each trial): training seconds (metric
"seconds"), core_seconds (process CPU seconds of training steps) and wall_seconds (Tune's time of the trial).
  utilisation          = sum core_seconds / (wall seconds of the whole sweep x cores)
  per_trial_overhead_s = mean over trials of (trial wall - training seconds): data, evaluations, checkpoints, MLflow
  outside_trials_s     = wall - sum trial wall / cores (approximate: Ray start/stop, MLflow set-up, scheduling)
Wall covers the whole run_sweep call, Ray's start-up and shut-down included.
"""
from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import usable_cores
from bench.settings import Settings
from mist_core.config import parse_config
from sweeps.config import SweepConfig
from sweeps.results import load_results
from sweeps.run import run_sweep

__all__ = ["sweep_config", "run"]

NAME = "bench-utilisation"
EVAL_EVERY = 50  # steps between a trial's reports (evaluation + checkpoint); smoke's preset (3) is for tests


def sweep_config(s: Settings, trials: int, root: Path) -> SweepConfig:
    return parse_config(SweepConfig, {
        "name": NAME, "task": "recon", "scale": s.sweep_scale, "datasets": [s.dataset],
        "methods": [s.sweep_method], "seeds": list(range(trials)),
        "budget": {"max_steps": 1_000_000, "max_seconds": float(s.sweep_seconds)},
        "train": {"eval_every": EVAL_EVERY},
        "search": {"num_samples": 1, "metric": "rmse", "mode": "min"},
        "resources": {"cpu": 1, "gpu": 0.5 if s.device.startswith("cuda") else 0.0},
        "checkpoint_interval_s": 30.0,
        "storage": str(root / "runs"), "tracking_uri": f"sqlite:///{root}/mlflow.db", "cache_dir": str(root / "cache"),
    }, where="bench.sweep")


def run(s: Settings) -> dict:
    cores = usable_cores()
    trials = s.sweep_trials or 2 * cores
    print(f"[bench] sweep: {trials} trials of {s.sweep_method} at {s.sweep_scale}, {s.sweep_seconds:g} s each, "
          f"on {cores} cores", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="mist-bench-sweep-") as tmp:
        root = Path(tmp)
        cfg = sweep_config(s, trials, root)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the sweep's progress lines: stderr, as ours
            code = run_sweep(cfg, storage=str(root / "runs"), num_cpus=cores)
        wall = time.perf_counter() - t0
        if code != 0:
            raise RuntimeError(f"the sweep ended with exit status {code}")
        df = load_results(root / "runs" / NAME)
    final = df[df["final"] & (df["metric"] == "seconds")]
    if len(final) != trials:
        raise RuntimeError(f"{len(final)} of {trials} trials made a final report")
    train_s = float(final["value"].sum())
    core_s = float(final["core_seconds"].sum())
    trial_wall = float(final["wall_seconds"].sum())
    return {"method": s.sweep_method, "scale": s.sweep_scale, "dataset": s.dataset, "trials": trials,
            "cores": cores, "seconds_per_trial": s.sweep_seconds, "eval_every": EVAL_EVERY,
            "wall_s": wall, "train_seconds_sum": train_s, "core_seconds_sum": core_s,
            "trial_wall_seconds_sum": trial_wall, "utilisation": core_s / (wall * cores),
            "train_wall_utilisation": train_s / (wall * cores),
            "per_trial_overhead_s": (trial_wall - train_s) / trials,
            "outside_trials_s": wall - trial_wall / cores}
