"""What a sweep will cost before it runs: planned training steps per trial, and core-hours from measured step costs.

Step costs come from the JSON the benchmarks wrote under bench/measured/, whole trainings first: a finished sweep's
trials (bench/measured/sweeps/*.json, written by `python -m sweeps.estimate record RESULTS --out FILE`: each
trial's training core-seconds / its steps, as the sweep ran them), else the oracle ladder's (bench/measured/
ladder/*.json, 1 thread: final core_seconds / final step of each row whose rung is a plain method), else the step
benchmark (`python -m bench`, rows of items.steps: median ms x cpu_per_wall, usually at 2 threads, so an upper
bound). Per (method, task, scale) the median of the first source that has it. Evaluation time is not counted.

    timings = step_timings()
    hours, missing = core_hours([Planned("mist", "recon", "quick", steps=1000, trials=2)], timings)
"""
from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, NamedTuple

__all__ = ["Planned", "Timing", "step_timings", "trial_costs", "planned_steps", "cell_steps", "longest_first",
           "core_hours", "MEASURED_DIR", "main"]

MEASURED_DIR = Path(__file__).resolve().parent.parent / "bench" / "measured"

Key = tuple[str, str, str]  # (method, task, scale)


class Timing(NamedTuple):
    core_seconds_per_step: float  # median over the runs measured
    n: int                        # how many runs
    source: str                   # "ladder" or "bench"


@dataclass(frozen=True)
class Planned:
    """Trials of one (dataset, method) cell that train the same number of steps."""

    method: str
    task: str
    scale: str
    steps: int    # per trial
    trials: int


def _training_samples(paths: Iterable[Path]) -> dict[Key, list[float]]:
    """Whole trainings (ladder rows, recorded sweep trials): final core_seconds / final step."""
    out: dict[Key, list[float]] = defaultdict(list)
    for row in _rows(paths, lambda d: d.get("rows")):
        final = row.get("final") or {}
        # oracle and ablation rungs train other networks than the method's: only a rung named after its method
        if row.get("rung", row.get("method")) != row.get("method") or row.get("scale") is None or not final.get("step"):
            continue
        out[(row["method"], row.get("task", "recon"), row["scale"])].append(final["core_seconds"] / final["step"])
    return out


def _bench_samples(paths: Iterable[Path]) -> dict[Key, list[float]]:
    out: dict[Key, list[float]] = defaultdict(list)
    for row in _rows(paths, lambda d: ((d.get("items") or {}).get("steps") or {}).get("rows")):
        if row.get("error") or row.get("median_ms") is None or row.get("scale") is None:
            continue
        core_ms = row["median_ms"] * row.get("cpu_per_wall", 1.0)
        out[(row["method"], row.get("task", "recon"), row["scale"])].append(core_ms / 1000)
    return out


def _rows(paths: Iterable[Path], rows_of) -> Iterable[dict[str, Any]]:
    for p in sorted(paths):
        try:
            data = json.loads(Path(p).read_text())
        except (OSError, ValueError):  # a half-written or foreign file: no timing from it
            continue
        rows = rows_of(data) if isinstance(data, dict) else None
        yield from (r for r in rows or () if isinstance(r, dict) and "method" in r)


def step_timings(measured_dir: str | Path = MEASURED_DIR) -> dict[Key, Timing]:
    """Median core-seconds per training step per (method, task, scale): recorded sweeps', else the ladder's, else
    the step benchmark's."""
    d = Path(measured_dir)
    timings = {k: Timing(statistics.median(v), len(v), "bench") for k, v in _bench_samples(d.glob("*.json")).items()}
    for source in ("ladder", "sweeps"):  # later sources win
        timings.update({k: Timing(statistics.median(v), len(v), source)
                        for k, v in _training_samples(d.glob(f"{source}/*.json")).items()})
    return timings


def trial_costs(results) -> list[dict[str, Any]]:
    """A sweep's results (sweeps.results.load_results) -> one row per trial of phase `seeds`: method, task, scale,
    final step and training core-seconds (the largest of its rows), as step_timings reads them."""
    df = results[results["phase"] == "seeds"]
    last = df.groupby(["method", "task", "scale", "trial"])[["step", "core_seconds"]].max().reset_index()
    return [{"method": r.method, "task": r.task, "scale": r.scale, "trial": r.trial,
             "final": {"step": int(r.step), "core_seconds": round(float(r.core_seconds), 3)}}
            for r in last.itertuples() if r.step > 0]


def planned_steps(params: dict[str, Any], learns: bool = True) -> int:
    """Training steps of one trial from its resolved parameters (Resolved.as_params()): max_steps, or for a method
    with nothing to learn at most one pass over the training data (as mist_core.train.Trainer.budget_steps)."""
    from mist_core.train import step_budget

    return step_budget(int(params["train.max_steps"]), params.get("dataset.n_train"), params["train.batch_size"], learns)


def cell_steps(cell) -> int:
    """Training steps of each trial of a plan's cell (sweeps.config.Cell); a module:Class method left unimported
    (--check) counts as one that learns."""
    from mist_core.registry import get_method

    return planned_steps(cell.params, get_method(cell.method).learns if cell.imported else True)


def longest_first(cells: Iterable, task: str, scale: str, timings: dict[Key, Timing]) -> list:
    """The cells by estimated core-seconds per trial, longest first (cells without a timing first, then the
    config's order): the longest-processing-time rule, so that no long trial starts last and runs alone."""
    def cost(cell) -> float:
        t = timings.get((cell.label, task, scale))
        return math.inf if t is None else t.core_seconds_per_step * cell_steps(cell)

    return sorted(cells, key=cost, reverse=True)


def core_hours(planned: Iterable[Planned], timings: dict[Key, Timing]) -> tuple[float, list[str]]:
    """(core-hours of the planned trials that have a timing, 'METHOD (task, scale)' of those that have none)."""
    seconds, missing = 0.0, []
    for p in planned:
        t = timings.get((p.method, p.task, p.scale))
        if t is None:
            missing.append(f"{p.method} ({p.task}, {p.scale})")
        else:
            seconds += t.core_seconds_per_step * p.steps * p.trials
    return seconds / 3600, sorted(set(missing))


def main(argv: list[str] | None = None) -> int:
    from sweeps.command import Parser, run_command, writable_file

    ap = Parser(prog="python -m sweeps.estimate", description="record a finished sweep's training cost per trial")
    sub = ap.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record", help="RESULTS (a results.parquet or sweep folder) -> a JSON step_timings reads")
    rec.add_argument("results")
    rec.add_argument("--out", required=True, help="e.g. bench/measured/sweeps/quick.json")
    a = ap.parse_args(argv)

    def record() -> int:
        from bench.machine import machine_info
        from sweeps.results import load_results, write_atomic

        out = writable_file(a.out, "--out")
        rows = trial_costs(load_results(a.results))
        write_atomic(out, json.dumps({"recorded_on": machine_info("cpu"), "results": a.results, "rows": rows},
                                     indent=1).encode())
        print(f"{len(rows)} trials -> {out}")
        return 0

    return run_command(record)


if __name__ == "__main__":
    import sys

    sys.exit(main())
